"""Pooling of a CNN's last feature map (B x C x H x W) into global descriptors.

SuperGlobal (Shao et al., ICCV 2023, seed 003) replaces plain GeM by four modules:

* ReLU+ (:func:`relu_plus`): the map clamped from below at ``alpha`` (0.014) instead of 0, so
  that weak but non-zero activations still count in a high-power mean;
* Regional-GeM (:func:`regional_gem`): each position mixed half and half with the
  generalised mean (power ``p`` = 2.5) of its ``size`` x ``size`` neighbourhood;
* GeM+ (:func:`gem` with ``p`` = 4.6): generalised mean over all positions;
* Scale-GeM (:func:`scale_gem`): the descriptors of one image at several scales combined by
  the element-wise max of the L2-normalised descriptors (``p`` = inf), or by a generalised
  mean with ``p`` = 10 after shifting by the minimum.

Plain GeM (p = 3), MAC (max) and SPoC (mean) are here too. Every function has an
``nn.Module`` twin whose constructor takes the same parameters.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import NotANumberError, finite_float, integer

__all__ = ["relu_plus", "regional_gem", "gem", "mac", "spoc", "scale_gem",
           "ReLUPlus", "RegionalGeM", "GeM", "MAC", "SPoC", "ScaleGeM", "SuperGlobalPooling", "make_pooling",
           "POOLINGS"]


def _map(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a B x C x H x W tensor, got {type(x).__name__}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating B x C x H x W feature map, got shape {tuple(x.shape)} ({x.dtype})")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name}: the feature map is empty (H x W = {x.shape[2]} x {x.shape[3]})")
    if x.shape[1] == 0:  # a 0-channel map would fail deep inside torch's padding with no name
        raise ValueError(f"{name}: the feature map has 0 channels, shape {tuple(x.shape)}")
    return x


def _power(p, name: str = "p", allow_inf: bool = False) -> float:
    # float() would take "3" and True, and fail on None with a message naming nothing
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise NotANumberError(f"{name}: must be a positive number, got {p!r} ({type(p).__name__})")
    p = float(p)
    if math.isnan(p) or p <= 0 or (math.isinf(p) and not allow_inf):
        raise ValueError(f"{name}: must be a positive {'number or inf' if allow_inf else 'finite number'}, got {p}")
    return p


def _window(size) -> int:
    """An odd positive int: int() would turn 3.5 into 3 and 4.9 into 4, hiding the mistake."""
    size = integer(size, "size", low=1)
    if size % 2 == 0:
        raise ValueError(f"size: must be an odd positive int, got {size}")
    return size


def _alpha(alpha) -> float:
    return finite_float(alpha, "alpha")


def _eps(eps) -> float:
    # the floor before the power: NaN would make every output NaN, inf every output inf,
    # and 0 or less lets 0^(1/p) and negative bases through
    return finite_float(eps, "eps", low=0.0, low_open=True)


def relu_plus(x: torch.Tensor, alpha: float = 0.014) -> torch.Tensor:
    """ReLU+: ``max(x, alpha)``."""
    alpha = _alpha(alpha)
    return _map(x).clamp(min=alpha)


def regional_gem(x: torch.Tensor, p: float = 2.5, size: int = 5) -> torch.Tensor:
    """Regional-GeM: ``0.5 * (mean of x^p over the size x size window)^(1/p) + 0.5 * x``.

    The window is centred on each position, with the map reflected at its borders
    (replicated where the map is too small to reflect: fewer than size // 2 + 1 rows or
    columns). Expects a non-negative map (after ReLU or ReLU+), as a power mean does.
    """
    x, p = _map(x), _power(p)
    size = _window(size)
    pad = size // 2
    mode = "reflect" if min(x.shape[2], x.shape[3]) > pad else "replicate"
    padded = F.pad(x.clamp(min=0).pow(p), (pad, pad, pad, pad), mode=mode) if pad else x.clamp(min=0).pow(p)
    local = F.avg_pool2d(padded, size, stride=1).pow(1.0 / p)
    return 0.5 * local + 0.5 * x


def gem(x: torch.Tensor, p: float = 4.6, eps: float = 1e-8) -> torch.Tensor:
    """Generalised mean over positions: ``mean(clamp(x, eps)^p)^(1/p)``, B x C x H x W -> B x C.
    p = 4.6 is SuperGlobal's GeM+; plain GeM uses p = 3; ``p = inf`` is MAC."""
    x, p, eps = _map(x), _power(p, allow_inf=True), _eps(eps)
    if math.isinf(p):
        return mac(x)
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: the max over positions, B x C."""
    return _map(x).amax(dim=(2, 3))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features (as a mean), B x C."""
    return _map(x).mean(dim=(2, 3))


def scale_gem(descriptors: Sequence[torch.Tensor], p: float = float("inf")) -> torch.Tensor:
    """Combines one image's descriptors at S scales (a list of S tensors, B x C each) into B x C.

    ``p = inf``: the element-wise max of the L2-normalised descriptors (SuperGlobal's default).
    Finite ``p`` (SuperGlobal uses 10): ``mean_s((x_s - gamma)^p)^(1/p) + gamma`` with gamma the
    minimum of the image's values over all scales and channels (the authors process one
    image at a time; taking gamma per image keeps a batch's rows independent).
    """
    if isinstance(descriptors, torch.Tensor):
        descriptors = list(descriptors) if descriptors.dim() == 3 else [descriptors]
    if isinstance(descriptors, (str, bytes)) or not isinstance(descriptors, Sequence):
        raise TypeError(f"descriptors: expected a list of B x C tensors, got {type(descriptors).__name__}")
    if len(descriptors) == 0:
        raise ValueError("descriptors: expected at least one scale")
    odd = [d for d in descriptors if not (isinstance(d, torch.Tensor) and d.is_floating_point())]
    if odd:
        what = odd[0].dtype if isinstance(odd[0], torch.Tensor) else type(odd[0]).__name__
        raise TypeError(f"descriptors: expected floating-point torch tensors, got {what}")
    shapes = {tuple(d.shape) for d in descriptors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"descriptors: expected S tensors of one shape B x C, got shapes {sorted(shapes)}")
    p = _power(p, allow_inf=True)
    x = torch.stack(list(descriptors), 0)  # S x B x C
    if math.isinf(p):
        return F.normalize(x, p=2, dim=-1).amax(dim=0)
    gamma = x.amin(dim=(0, 2), keepdim=True)
    return (x - gamma).pow(p).mean(dim=0).pow(1.0 / p) + gamma[0]


class ReLUPlus(nn.Module):
    def __init__(self, alpha: float = 0.014):
        super().__init__()
        self.alpha = _alpha(alpha)  # checked here, not first at forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_plus(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class RegionalGeM(nn.Module):
    def __init__(self, p: float = 2.5, size: int = 5):
        super().__init__()
        self.p, self.size = _power(p), _window(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return regional_gem(x, self.p, self.size)

    def extra_repr(self) -> str:
        return f"p={self.p}, size={self.size}"


class GeM(nn.Module):
    def __init__(self, p: float = 4.6, eps: float = 1e-8):
        super().__init__()
        self.p, self.eps = _power(p, allow_inf=True), _eps(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MAC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


class SPoC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


class ScaleGeM(nn.Module):
    def __init__(self, p: float = float("inf")):
        super().__init__()
        self.p = _power(p, allow_inf=True)

    def forward(self, descriptors: Sequence[torch.Tensor]) -> torch.Tensor:
        return scale_gem(descriptors, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SuperGlobalPooling(nn.Module):
    """ReLU+ -> Regional-GeM -> GeM+ on one scale's map (B x C x H x W -> B x C)."""

    def __init__(self, alpha: float = 0.014, regional_p: float = 2.5, size: int = 5, p: float = 4.6):
        super().__init__()
        self.relu_plus = ReLUPlus(alpha)
        self.regional = RegionalGeM(regional_p, size)
        self.gem = GeM(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gem(self.regional(self.relu_plus(x)))


POOLINGS = ("superglobal", "gem", "gem+", "mac", "spoc")


def make_pooling(name: str) -> nn.Module:
    """A pooling module by name: superglobal (ReLU+, Regional-GeM, GeM+), gem (p = 3),
    gem+ (p = 4.6), mac, spoc."""
    table = {"superglobal": SuperGlobalPooling, "gem": lambda: GeM(3.0), "gem+": lambda: GeM(4.6),
             "mac": MAC, "spoc": SPoC}
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"pooling: unknown {name!r}; choose from {', '.join(POOLINGS)}")
    return table[name]()
