from .gnd import load_gnd
from .features import FeatureSet, load_features, load_retrieval_features
