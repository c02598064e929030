"""Checkpoint files of the learned re-rankers: the model's configuration and weights and,
from training, whatever state resumes it, in one file written atomically and read
without running code (``weights_only``)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .._safe_load import load_weights_only

VERSION = 1


def save_checkpoint(path, model, *, fmt: str, **state) -> None:
    """Writes atomically (a temporary file renamed into place): a run stopped mid-write
    leaves the previous checkpoint intact. ``model.config`` must rebuild the model."""
    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": fmt, "version": VERSION, "model_config": dict(model.config),
               "state_dict": model.state_dict(), **state}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, *, fmt: str, what: str, how: str) -> dict:
    """The checkpoint's contents; FileNotFoundError or ValueError saying what is wrong.

    Read with ``weights_only=True``: a checkpoint cannot run code when loaded.
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    payload = load_weights_only(path, "checkpoint", "a pycsa checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"checkpoint: {path} is not a {what} checkpoint (train one with {how})")
    version = payload.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"checkpoint: {path} has format version {version!r}, not an int: the file is damaged "
                         "or was not written by pycsa")
    if version > VERSION:
        raise ValueError(f"checkpoint: {path} has format version {version}; this pycsa reads "
                         f"up to {VERSION}: upgrade pycsa")
    return payload
