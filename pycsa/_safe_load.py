"""torch.load without running code (``weights_only``), with one-line errors that name the file."""
from __future__ import annotations

import re
import zipfile

import torch


def check_zip(path, prefix: str) -> None:
    """ValueError ``"{prefix}: ..."`` naming ``path`` when a member of the zip archive fails
    its CRC. torch.load never checks them, so a flipped byte in a weight would otherwise
    load as a slightly different model. Files that are not zips are left to torch.load."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, OSError, ...
        raise ValueError(f"{prefix}: {path} is damaged ({type(exc).__name__}: {exc})") from exc
    if bad is not None:
        raise ValueError(f"{prefix}: {path} is damaged: its member {bad} fails the zip CRC check "
                         "(a changed byte; copy the file again)")


def load_weights_only(path, prefix: str, what: str):
    """The file's contents; ValueError ``"{prefix}: ..."`` naming ``path`` when it is damaged,
    cannot be read or holds Python objects (which unpickling would construct, i.e. code it would run)."""
    check_zip(path, prefix)
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
