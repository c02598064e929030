"""Checkpoint files of the learned re-rankers: the model's configuration and weights and,
from training, whatever state resumes it, in one file written atomically and read
without running code (``weights_only``)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle error, foreign format, ...
        raise ValueError(f"checkpoint: cannot read {path} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"checkpoint: {path} is not a {what} checkpoint (train one with {how})")
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"checkpoint: {path} has format version {payload['version']}; this pycsa reads "
                         f"up to {VERSION}: upgrade pycsa")
    return payload
