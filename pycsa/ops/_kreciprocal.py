"""Fake kernels of the k-reciprocal ops (their wrappers live in pycsa.rerank.kreciprocal).

Registered here so that importing pycsa.ops makes every pycsa op traceable.
"""
from __future__ import annotations

import torch

from . import _extension


def _register_fakes() -> None:
    # Every variant returns the float32 q x g distance, whatever the input dtype.
    @torch.library.register_fake("pycsa::k_reciprocal")
    def _(q_g, q_q, g_g, k1, k2, lambda_value):
        return q_g.new_empty(q_g.shape, dtype=torch.float32)

    @torch.library.register_fake("pycsa::k_reciprocal_features")
    def _(query, gallery, k1, k2, lambda_value):
        return query.new_empty((query.shape[0], gallery.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("pycsa::k_reciprocal_self")
    def _(feats, k1, k2, lambda_value):
        return feats.new_empty((feats.shape[0], feats.shape[0]), dtype=torch.float32)

    # rank-based (neighbour sets): no useful gradient
    for op in ("k_reciprocal", "k_reciprocal_features", "k_reciprocal_self"):
        _extension.register_non_differentiable(f"pycsa::{op}")


if _extension.has_cpu_kernels():
    _register_fakes()
