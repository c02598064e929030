from .gnd import load_gnd
from .features import FeatureSet, load_features, load_retrieval_features
from .synthetic_reid import ReidData, make_reid, make_reid_preset
