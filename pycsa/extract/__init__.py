"""From images to global descriptors: SuperGlobal's pooling modules (seed 003), CNN trunks with
torchvision's parameter names, a multi-scale extractor, and the folder -> features-file run
behind ``pycsa extract``."""
from .backbones import BACKBONES, build_backbone, load_backbone_weights
from .extractor import SUPERGLOBAL_SCALES, GlobalExtractor, LocalBatch, resolve_dtype
from .images import list_images, load_image
from .pooling import (MAC, POOLINGS, GeM, ReLUPlus, RegionalGeM, ScaleGeM, SPoC, SuperGlobalPooling, gem, mac,
                      make_pooling, regional_gem, relu_plus, scale_gem, spoc)
from .to_file import LocalPCA, extract_to_file, read_labels

__all__ = ["BACKBONES", "build_backbone", "load_backbone_weights", "SUPERGLOBAL_SCALES", "GlobalExtractor",
           "LocalBatch", "resolve_dtype", "list_images", "load_image", "MAC", "POOLINGS", "GeM", "ReLUPlus",
           "RegionalGeM", "ScaleGeM", "SPoC", "SuperGlobalPooling", "gem", "mac", "make_pooling", "regional_gem",
           "relu_plus", "scale_gem", "spoc", "LocalPCA", "extract_to_file", "read_labels"]
