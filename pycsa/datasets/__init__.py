from .gnd import load_gnd
