"""CSA checkpoints: one file holding the model, its configuration and, from training,
the optimiser, the schedule and the history, so that training resumes exactly."""
from __future__ import annotations

from ..._types import PathLike
from .. import checkpoint as _io
from .model import CSA

FORMAT = "pycsa.csa"


def save_checkpoint(path: PathLike, model: CSA, **state) -> None:
    """Writes a CSA checkpoint atomically (see :mod:`pycsa.rerank.checkpoint`)."""
    _io.save_checkpoint(path, model, fmt=FORMAT, **state)


def load_checkpoint(path: PathLike) -> dict:
    """The checkpoint's contents; FileNotFoundError or ValueError saying what is wrong."""
    return _io.load_checkpoint(path, fmt=FORMAT, what="pycsa CSA", how="`pycsa train`")


def model_from_checkpoint(payload: dict, path: PathLike = "checkpoint", num_anchors: int | None = None) -> CSA:
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


def load_model(path: PathLike, num_anchors: int | None = None) -> CSA:
    """A trained CSA model from a checkpoint file, in eval mode on the CPU."""
    return model_from_checkpoint(load_checkpoint(path), path, num_anchors).eval()
