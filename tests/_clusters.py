"""Labelled features of a few well-separated classes, shared by the CSA and tune tests."""
from __future__ import annotations

import torch


def clustered_features(n=60, d=16, classes=6, seed=0):
    """(X, y): n unit rows around ``classes`` random unit centres (noise 0.5), labels 0..classes-1 in turn."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, d, generator=g), dim=1)
    y = torch.arange(n) % classes
    X = torch.nn.functional.normalize(centres[y] + 0.5 * torch.randn(n, d, generator=g), dim=1)
    return X, y
