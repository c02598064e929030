"""Checkpoint files of the learned re-rankers: the model's configuration and weights and,
from training, whatever state resumes it, in one file written atomically and read
without running code (``weights_only``)."""
from __future__ import annotations

import os
import random
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .._safe_load import load_weights_only

VERSION = 1


def save_checkpoint(path, model, *, fmt: str, **state) -> None:
    """Writes atomically: to a temporary file of its own in the same folder, then renamed
    into place, so that a run stopped mid-write leaves the previous checkpoint intact and a
    reader never sees half a file. ``model.config`` must rebuild the model."""
    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": fmt, "version": VERSION, "model_config": dict(model.config),
               "state_dict": model.state_dict(), **state}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def writing(path):
    """Holds an exclusive lock on ``PATH.lock`` while a training run writes ``path``: a second
    run (another process) asking for the same path gets an error naming the first, instead
    of both overwriting one file. The kernel drops the lock when its process ends, so a
    killed run leaves nothing that blocks the next one."""
    if path is None:
        yield
        return
    import fcntl

    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    f = open(lock, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise ValueError(f"checkpoint: {path} is being written by {who} (it holds {lock}); "
                         "use another path, or wait for that run to end") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}")
        f.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)
        f.close()  # closing releases the lock


def publish(tmp) -> None:
    """Gives a finished temporary file (mkstemp makes them 0600) the mode a plain open()
    would, so that the renamed file is readable as the user's umask allows."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)


def rng_state(device: torch.device | None = None) -> dict:
    """Every random generator a training step draws from (torch's, CUDA's on ``device``,
    numpy's and Python's), in a form ``weights_only`` loading accepts."""
    key, pos, has_gauss, gauss = np.random.get_state()[1:]
    version, mt, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
             "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(gauss),
             "python_version": int(version), "python_state": list(mt), "python_gauss": py_gauss}
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restores what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(state["python_state"]), state["python_gauss"]))
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))


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
