"""CSA checkpoints: one file holding the model, its configuration and, from training,
the optimiser, the schedule and the history, so that training resumes exactly."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .model import CSA

FORMAT = "pycsa.csa"
VERSION = 1


def save_checkpoint(path, model, *, fmt: str = FORMAT, **state) -> None:
    """Writes atomically (a temporary file renamed into place): a run stopped mid-write
    leaves the previous checkpoint intact. ``model.config`` must rebuild the model."""
    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": fmt, "version": VERSION, "model_config": dict(model.config),
               "state_dict": model.state_dict(), **state}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, *, fmt: str = FORMAT, what: str = "pycsa CSA", how: str = "`pycsa train`") -> dict:
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


def model_from_checkpoint(payload: dict, path="checkpoint", num_anchors: int | None = None) -> CSA:
    """The CSA model of a loaded checkpoint; ``num_anchors`` checks the L it was trained with."""
    config = payload["model_config"]
    if num_anchors is not None and config["num_anchors"] != num_anchors:
        raise ValueError(f"checkpoint: {path} was trained with L={config['num_anchors']} anchors, "
                         f"but L={num_anchors} was asked for; affinity features of another L do not fit it")
    model = CSA(**config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint: {path}: the weights do not fit the stored configuration ({exc})") from exc
    return model


def load_model(path, num_anchors: int | None = None) -> CSA:
    """A trained CSA model from a checkpoint file, in eval mode on the CPU."""
    return model_from_checkpoint(load_checkpoint(path), path, num_anchors).eval()
