"""The slow reference implementations kept in bench/ (the baselines), imported by path."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_pycsa_bench_{name}", _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


baselines = _load("kreciprocal_numpy")
superglobal_plain = _load("superglobal_plain").superglobal_plain
gnn_official = _load("gnn_reranking_official")
