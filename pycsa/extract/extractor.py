"""A CNN trunk run over images at several scales: global descriptors, and local ones for RRT."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import finite_float, integer, optional_callable
from .._tensors import as_device, check_finite
from .._types import Device, DType
from .pooling import POOLINGS, ScaleGeM, make_pooling

__all__ = ["GlobalExtractor", "LocalBatch", "resolve_dtype", "SUPERGLOBAL_SCALES", "MAX_SCALE", "MAX_PIXELS",
           "check_scales"]

SUPERGLOBAL_SCALES = (0.7071, 1.0, 1.4142)

# Scale factors lie in (0, MAX_SCALE]: multi-scale retrieval uses factors around 1 (SuperGlobal
# 0.7-1.4), and a factor of 1000 asks for tens of GB before the trunk sees a pixel.
MAX_SCALE = 4.0
# The most pixels one image may have after scaling (8192 x 8192): a 1024-pixel image at
# MAX_SCALE is 16.8 M; past this budget the trunk's activations no longer fit common memory.
MAX_PIXELS = 8192 * 8192


def check_scales(scales, name: str = "scales") -> tuple[float, ...]:
    """A non-empty sequence of finite factors in (0, MAX_SCALE], as a tuple of floats. A str is
    refused: tuple("12") would be the factors 1 and 2, and "0.5" would fail on its '.'."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(f"{name}: expected a sequence of scale factors such as (0.7071, 1.0, 1.4142), "
                        f"got {scales!r} ({type(scales).__name__})")
    if len(scales) == 0:
        raise ValueError(f"{name}: expected at least one scale factor")
    return tuple(finite_float(s, name, 0.0, MAX_SCALE, low_open=True) for s in scales)


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 where the device computes it natively (CUDA with bf16; a CPU with
    AVX-512 BF16 / AMX, as oneDNN reports), float32 elsewhere."""
    if dtype in (torch.float32, "float32", "fp32"):
        return torch.float32
    if dtype in (torch.bfloat16, "bfloat16", "bf16"):
        return torch.bfloat16
    if dtype != "auto":
        raise ValueError(f"dtype: expected 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        try:
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
        except (AttributeError, RuntimeError):
            return torch.float32
    return torch.float32


@dataclass
class LocalBatch:
    """The strongest positions of each image's maps, over all scales."""
    descriptors: list
    """per image: n x C float32 (the map's vectors, L2-normalised)."""
    scales: list
    """per image: n int64, the index of the scale each came from."""
    positions: list
    """per image: n x 2 float32, (x, y) of the cell's centre in the input image's pixels."""


class GlobalExtractor(nn.Module):
    """Descriptors of images from a CNN trunk (any ``nn.Module`` mapping B x 3 x H x W to a
    B x C x h x w map, e.g. a torchvision ResNet without its pool and fc).

    Per scale: the images resized by the scale factor (bilinear, antialiased), the trunk, the
    pooling (SuperGlobal's ReLU+ -> Regional-GeM -> GeM+ by default), L2 normalisation, and
    the ``projection`` when given; the scales are then combined by Scale-GeM (``scale_p``:
    inf, the max of normalised descriptors, or a finite power) and L2-normalised.

    The trunk runs in ``dtype`` ('auto': bfloat16 where the device has it) under autocast;
    pooling runs in float32, because a power mean with p = 4.6 in bfloat16 loses digits.
    """

    def __init__(self, backbone: nn.Module, pooling: str | nn.Module = "superglobal",
                 scales: Sequence[float] = SUPERGLOBAL_SCALES, scale_p: float = float("inf"),
                 projection: nn.Module | None = None, device: Device = None, dtype: DType = "auto"):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone: expected a torch.nn.Module, got {type(backbone).__name__}")
        scales = check_scales(scales)
        # anything else would fail first at forward, as "'NoneType' object is not callable"
        if pooling is None or not (isinstance(pooling, str) or callable(pooling)):
            raise TypeError(f"pooling: expected a name ({', '.join(POOLINGS)}) "
                            f"or a module, got {pooling!r} ({type(pooling).__name__})")
        optional_callable(projection, "projection")
        self.backbone = backbone.eval()
        self.pooling = make_pooling(pooling) if isinstance(pooling, str) else pooling
        self.scales = scales
        self.combine = ScaleGeM(scale_p)
        self.projection = projection
        # as_device: a named ValueError for "foo" or for CUDA on a machine without it
        self.device = as_device(device, "device") if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(dtype, self.device)
        self.to(self.device)

    def _maps(self, images: torch.Tensor):
        """(scale index, float32 B x C x h x w map) for each scale."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images: expected a B x 3 x H x W torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected B x 3 x H x W, got shape {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H == 0 or W == 0 or images.shape[0] == 0:
            raise ValueError(f"images: empty batch, shape {tuple(images.shape)}")
        # refused before any resize allocates: the largest scale sets the memory needed
        top = max(self.scales)
        if int(H * top) * int(W * top) > MAX_PIXELS:
            raise ValueError(f"images: {H} x {W} at scale {top:g} is {int(H * top)} x {int(W * top)} pixels, more "
                             f"than the budget of {MAX_PIXELS} ({math.isqrt(MAX_PIXELS)}^2) per image: resize "
                             "the images or use smaller scales")
        images = images.to(self.device, torch.float32)
        # a NaN pixel spreads through every convolution and pooling into NaN descriptors
        check_finite(images, "images")
        for s, factor in enumerate(self.scales):
            size = (max(1, int(H * factor)), max(1, int(W * factor)))
            x = images if size == (H, W) else F.interpolate(images, size=size, mode="bilinear",
                                                            align_corners=False, antialias=factor < 1)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                fmap = self.backbone(x)
            if fmap.dim() != 4:
                raise ValueError(f"backbone: must return a B x C x h x w map, returned shape {tuple(fmap.shape)}")
            yield s, fmap.float()

    def _descriptor(self, fmap: torch.Tensor) -> torch.Tensor:
        d = F.normalize(self.pooling(fmap), p=2, dim=1)
        return d if self.projection is None else self.projection(d)

    def _combined(self, per_scale) -> torch.Tensor:
        glob = F.normalize(self.combine(per_scale), p=2, dim=1).cpu()
        # the images were checked finite, so NaN or inf here comes from the network itself
        if glob.numel() and not bool(torch.isfinite(glob).all()):
            raise ValueError("backbone: produced NaN or inf descriptors from finite images; the trunk's or the "
                             "projection's weights (--weights) are the likely cause (or an overflow in "
                             f"{str(self.dtype).replace('torch.', '')})")
        return glob

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W normalised images (one size per batch) -> B x D, L2-normalised, on the CPU.
        Each image at the largest scale may have at most :data:`MAX_PIXELS` pixels."""
        per_scale = [self._descriptor(fmap) for _, fmap in self._maps(images)]
        return self._combined(per_scale)

    @torch.no_grad()
    def extract(self, images: torch.Tensor, max_local: int = 0) -> tuple[torch.Tensor, LocalBatch | None]:
        """(B x D global descriptors, LocalBatch or None): one pass of the trunk gives both.
        Local descriptors are the ``max_local`` positions with the largest map norm over all
        scales (ties: the earlier scale, then the lower position), L2-normalised."""
        # a float would be truncated, None fail at the comparison below with no name
        max_local = integer(max_local, "max_local", low=0)
        per_scale, strengths, vectors, where = [], [], [], []
        for s, fmap in self._maps(images):
            per_scale.append(self._descriptor(fmap))
            if max_local > 0:
                H, W = images.shape[-2:]  # here, once _maps has checked that images is a tensor
                B, C, h, w = fmap.shape
                flat = fmap.flatten(2).transpose(1, 2)  # B x hw x C
                strengths.append(flat.norm(dim=2))
                vectors.append(flat)
                ys, xs = torch.meshgrid(torch.arange(h, device=fmap.device), torch.arange(w, device=fmap.device),
                                        indexing="ij")
                pos = torch.stack([(xs.flatten() + 0.5) * (W / w), (ys.flatten() + 0.5) * (H / h)], 1)
                where.append((torch.full((h * w,), s, dtype=torch.long, device=fmap.device), pos))
        glob = self._combined(per_scale)
        if max_local <= 0:
            return glob, None
        strength = torch.cat(strengths, 1)
        vecs = torch.cat(vectors, 1)
        scale_of = torch.cat([w_[0] for w_ in where])
        pos_of = torch.cat([w_[1] for w_ in where]).float()
        n = min(int(max_local), strength.shape[1])
        # stable sort on the negated strength: ties keep the lower index
        order = torch.sort(-strength, dim=1, stable=True).indices[:, :n]
        out = LocalBatch([], [], [])
        for b in range(strength.shape[0]):
            idx = order[b]
            out.descriptors.append(F.normalize(vecs[b, idx], p=2, dim=1).cpu())
            out.scales.append(scale_of[idx].cpu())
            out.positions.append(pos_of[idx].cpu())
        return glob, out
