"""Loaders of feature files, ground truth and local descriptors, and the synthetic sets."""
from .gnd import load_gnd
from .features import FeatureSet, load_features, load_retrieval_features
from .synthetic_reid import ReidData, make_reid, make_reid_preset
from .local import LocalDescriptors, load_local_descriptors, make_local_descriptors

__all__ = ["load_gnd", "FeatureSet", "load_features", "load_retrieval_features", "ReidData", "make_reid",
           "make_reid_preset", "LocalDescriptors", "load_local_descriptors", "make_local_descriptors"]
