"""Local descriptors: a variable number per image, stored flat with offsets.

Image i owns rows ``offsets[i]:offsets[i+1]`` of ``descriptors`` (M x d), each with a
scale index (into the extractor's list of input scales). This is how DELG-style
extractors write them and how ``../shared/data/mpeg7/mpeg7_mobilenetv2_local128.npz``
stores them (keys ``local``, ``offsets``, ``scale``).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._checks import finite_float, integer, positive_int, unit_interval
from .._safe_load import load_weights_only
from .._types import ArrayLike, PathLike, Device
from ._arrays import load_npz, require_dense

_DESC_KEYS = ("local", "descriptors", "local_descriptors")


@dataclass
class LocalDescriptors:
    descriptors: torch.Tensor
    """M x d, all images' descriptors one after another."""
    offsets: torch.Tensor
    """N + 1 int64, non-decreasing, offsets[0] = 0, offsets[-1] = M."""
    scales: torch.Tensor
    """M int64 scale indices (0 when the extractor has one scale)."""

    def __post_init__(self):
        self.descriptors = torch.as_tensor(self.descriptors)
        self.offsets = _integers(self.offsets, "offsets")
        self.scales = _integers(self.scales, "scales")
        D, off, sc = self.descriptors, self.offsets, self.scales
        if D.dim() != 2 or not D.is_floating_point():
            raise ValueError(f"descriptors: expected an M x d float matrix, got shape {tuple(D.shape)} ({D.dtype})")
        if off.dim() != 1 or off.numel() < 1 or int(off[0]) != 0:
            raise ValueError("offsets: expected N + 1 values starting at 0")
        if off.numel() > 1 and bool((off.diff() < 0).any()):
            raise ValueError("offsets: must be non-decreasing (image i owns rows offsets[i]:offsets[i+1])")
        if int(off[-1]) != D.shape[0]:
            raise ValueError(f"offsets: the last offset is {int(off[-1])} but there are {D.shape[0]} descriptors")
        if sc.shape != (D.shape[0],):
            raise ValueError(f"scales: expected one scale index per descriptor ({D.shape[0]}), got shape {tuple(sc.shape)}")
        if sc.numel() and int(sc.min()) < 0:
            raise ValueError("scales: indices must be >= 0")
        if not bool(torch.isfinite(D).all()):
            raise ValueError("descriptors: contain NaN or inf")

    @property
    def num_images(self) -> int:
        return self.offsets.numel() - 1

    @property
    def dim(self) -> int:
        return self.descriptors.shape[1]

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets.diff()

    @property
    def num_scales(self) -> int:
        return int(self.scales.max()) + 1 if self.scales.numel() else 1

    def subset(self, images: ArrayLike) -> "LocalDescriptors":
        """The descriptors of the given images, in that order."""
        images = _integers(images, "images")
        if images.dim() != 1:
            raise ValueError(f"images: expected a 1-D array of image numbers, got shape {tuple(images.shape)}")
        if images.numel() and (int(images.min()) < 0 or int(images.max()) >= self.num_images):
            raise IndexError(f"images: must lie in [0, {self.num_images}) (the images held), found "
                             f"[{int(images.min())}, {int(images.max())}]")
        counts = self.counts[images]
        rows = torch.cat([torch.arange(int(self.offsets[i]), int(self.offsets[i + 1])) for i in images.tolist()]) \
            if images.numel() else torch.zeros(0, dtype=torch.long)
        return LocalDescriptors(self.descriptors[rows], torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
                                self.scales[rows])

    def padded(self, images: torch.Tensor,
               max_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Descriptors of ``images`` padded to P x C x d, their scales P x C and counts P
        (the first ``max_count`` descriptors of an image when it has more)."""
        images = images.long().cpu()
        start, counts = self.offsets[images], self.counts[images]
        if max_count is not None:
            counts = counts.clamp(max=max_count)
        C = int(counts.max()) if counts.numel() else 0
        j = torch.arange(C)
        valid = j < counts.unsqueeze(1)
        rows = torch.where(valid, start.unsqueeze(1) + j, torch.zeros((), dtype=torch.long))
        dev = self.descriptors.device  # offsets and scales stay on the CPU; descriptors may not
        desc = self.descriptors[rows.to(dev)] * valid.to(dev).unsqueeze(-1)
        return desc, self.scales[rows] * valid, counts

    def to(self, device: Device) -> "LocalDescriptors":
        """The store with its descriptors on ``device`` (itself when they are there already)."""
        if self.descriptors.device == torch.device(device):
            return self
        moved = copy.copy(self)  # already validated: no second pass (a host sync on a GPU)
        moved.descriptors = self.descriptors.to(device)
        return moved


def _integers(value, name: str) -> torch.Tensor:
    """``value`` as an int64 tensor; floats are refused (0.5 would be truncated to image 0), as are
    bools (a mask would be read as images 0 and 1)."""
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if t.numel() == 0 and t.dtype == torch.float64:  # np.asarray([]) is float64
        t = t.long()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected integers, got {t.dtype}")
    return t.long()


def load_local_descriptors(path: PathLike) -> LocalDescriptors:
    """From .npz (or .pt holding a dict): ``local`` (M x d), ``offsets`` (N + 1 ints) and
    optionally ``scale`` (M ints). Raises FileNotFoundError / ValueError / TypeError naming
    the file and what is wrong."""
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a local descriptors file")
    if not path.is_file():
        raise FileNotFoundError(f"local descriptors file not found: {path}")
    if path.suffix == ".npz":
        data = load_npz(path)
    elif path.suffix == ".pt":
        data = load_weights_only(path, "locals", "a local descriptors file")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of tensors")
    else:
        raise ValueError(f"{path}: expected .npz or .pt")
    key = next((k for k in _DESC_KEYS if k in data), None)
    if key is None or "offsets" not in data:
        raise ValueError(f"{path}: needs {' or '.join(_DESC_KEYS)} and 'offsets'; keys present: "
                         f"{', '.join(sorted(map(str, data)))}")
    desc = _tensor(path, data, key, "numbers").float()
    offsets = _tensor(path, data, "offsets", "integers")
    scale_key = next((k for k in ("scale", "scales_index") if k in data), None)
    if scale_key is None:
        scales = torch.zeros(desc.shape[0], dtype=torch.long)
    else:
        scales = _tensor(path, data, scale_key, "integers")
        if scales.shape != (desc.shape[0],):
            raise ValueError(f"{path}[{scale_key!r}]: has shape {tuple(scales.shape)} but there are "
                             f"{desc.shape[0]} descriptors (one scale index each)")
    try:
        return LocalDescriptors(desc, offsets, scales)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _tensor(path, data: dict, key: str, kind: str) -> torch.Tensor:
    """``data[key]`` as a tensor of real ``numbers`` or of ``integers``, else an error naming it."""
    value = data[key]
    try:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as exc:  # strings, ragged lists, ...
        raise TypeError(f"{path}[{key!r}]: expected an array of {kind}, got {type(value).__name__} ({exc})") from exc
    require_dense(t, f"{path}[{key!r}]")
    integral = not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
    if t.is_complex() or t.dtype == torch.bool or (kind == "integers" and not integral):
        raise TypeError(f"{path}[{key!r}]: expected an array of {kind}, got {t.dtype}")
    return t.long() if integral else t


def make_local_descriptors(labels: ArrayLike, *, dim: int = 128, min_count: int = 20, max_count: int = 120,
                           parts_per_class: int = 40, shared: float = 0.4, noise: float = 0.35,
                           num_scales: int = 2, seed: int = 0) -> LocalDescriptors:
    """Synthetic local descriptors, a variable number per image (``min_count``..``max_count``).

    Each class has ``parts_per_class`` random unit "parts"; a share ``shared`` of an
    image's descriptors are noisy copies of parts of its class (what two photos of
    one landmark share), the rest clutter unique to the image. Negative labels
    (distractors) get clutter only. Rows L2-normalised, float32; seeded.
    """
    dim, num_scales = positive_int(dim, "dim"), positive_int(num_scales, "num_scales")
    parts_per_class = positive_int(parts_per_class, "parts_per_class")
    min_count = integer(min_count, "min_count", low=0)
    max_count = integer(max_count, "max_count", low=min_count, high_is="min_count")
    shared, noise = unit_interval(shared, "shared"), finite_float(noise, "noise", low=0)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[labels >= 0])
    parts = {c: rng.standard_normal((parts_per_class, dim)) for c in classes}
    counts = rng.integers(min_count, max_count + 1, size=labels.shape[0])
    out = []
    for lab, n in zip(labels, counts):
        d = rng.standard_normal((n, dim))
        if lab >= 0:
            k = rng.binomial(n, shared)
            pick = rng.integers(0, parts_per_class, size=k)
            d[:k] = parts[lab][pick] + noise * rng.standard_normal((k, dim))
        out.append(d / np.linalg.norm(d, axis=1, keepdims=True))
    desc = np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    scales = rng.integers(0, num_scales, size=desc.shape[0])
    return LocalDescriptors(torch.from_numpy(desc), torch.from_numpy(offsets), torch.from_numpy(scales))
