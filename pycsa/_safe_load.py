"""torch.load without running code (``weights_only``), with one-line errors that name the file."""
from __future__ import annotations

import re

import torch


def load_weights_only(path, prefix: str, what: str):
    """The file's contents; ValueError ``"{prefix}: ..."`` naming ``path`` when it cannot be read
    or holds Python objects (which unpickling would construct, i.e. code it would run)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign format, refused globals, ...
        text = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise ValueError(f"{prefix}: {path} is not {what}: it holds a Python object ({refused.group(1)}) "
                             "that pycsa refuses to load (weights_only: nothing in the file was run)") from exc
        why = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        first = why.group(1).strip() if why else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{prefix}: cannot read {path} ({type(exc).__name__}: {first})") from exc
