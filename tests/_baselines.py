"""The slow reference implementations kept in bench/ (the baselines), imported by path."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "bench" / "kreciprocal_numpy.py"
_spec = importlib.util.spec_from_file_location("_pycsa_bench_kreciprocal_numpy", _PATH)
baselines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baselines)
