"""Image files in, normalised tensors out: listing, decoding (Pillow) and resizing.

Images are resized as SuperGlobal and cnnimageretrieval do: the longest side brought down to
``size`` pixels (never enlarged), the aspect ratio kept; the shortest side at least 32. A file
Pillow cannot decode is not an error here: the dataset returns the reason, and the extractor
reports it by name and goes on.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._types import PathLike

__all__ = ["IMAGE_EXTENSIONS", "list_images", "ImageFiles", "load_image", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIDE = 32  # the shortest side at least this, so that each scale leaves the trunk a map of >= 1 x 1


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is a dependency
        raise ImportError("pycsa extract needs Pillow: pip install pillow") from exc
    return Image


def list_images(source: PathLike) -> tuple[Path, list[str]]:
    """(root, names): every image file under a folder (recursive, sorted; names relative to
    it, with '/'), or the lines of a list file (paths relative to the list's folder unless
    absolute; blank lines and lines starting with '#' skipped). Names are what the features
    file records, so that labels or a ground truth can be joined to them."""
    path = Path(os.fspath(source))
    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not names:
            raise ValueError(f"--images: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
        return path, names
    if path.is_file():
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--images: {path} is neither a folder nor a readable list of image paths ({exc})") from exc
        names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not names:
            raise ValueError(f"--images: the list {path} names no image")
        dup = len(names) - len(set(names))
        if dup:
            raise ValueError(f"--images: the list {path} names {dup} image(s) twice")
        return path.parent, names
    raise FileNotFoundError(f"--images: no such folder or list file: {path}")


def load_image(path: PathLike, size: int, box: Sequence[float] | None = None) -> torch.Tensor:
    """3 x H x W float32, normalised with ImageNet's mean and std; the longest side at most
    ``size`` (aspect kept, never enlarged, the shortest side at least 32). ``box``: (x1, y1,
    x2, y2) to crop first (the query regions of Revisited Oxford/Paris). Raises
    OSError/ValueError when unreadable."""
    Image = _pillow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are photos too
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the image is much larger
            im.load()  # decode now: a truncated file fails here, not later
            im = im.convert("RGB")  # greyscale, palette, CMYK, RGBA
    if box is not None:
        im = im.crop(tuple(int(round(float(v))) for v in box))
    w, h = im.size
    if w < 1 or h < 1:
        raise ValueError(f"the image is empty ({w} x {h})")
    s = min(1.0, size / max(w, h))  # like PIL's thumbnail (cnnimageretrieval, SuperGlobal): never enlarged
    nw, nh = max(MIN_SIDE, round(w * s)), max(MIN_SIDE, round(h * s))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


class ImageFiles(torch.utils.data.Dataset):
    """Item i: (i, 3 x H x W tensor, None) or (i, None, 'why it is unreadable')."""

    def __init__(self, root: Path, names: list[str], indices, size: int, boxes=None):
        self.root, self.names, self.indices, self.size, self.boxes = root, names, list(indices), size, boxes

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = self.indices[j]
        path = Path(self.names[i]) if os.path.isabs(self.names[i]) else self.root / self.names[i]
        try:
            box = None if self.boxes is None else self.boxes[i]
            return i, load_image(path, self.size, box), None
        except Exception as exc:  # noqa: BLE001 - any decoder failure is "unreadable", never fatal
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return i, None, f"{type(exc).__name__}: {why}"


def collate_one(items):
    return items[0]
