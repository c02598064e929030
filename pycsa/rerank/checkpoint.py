"""Checkpoint files of the learned re-rankers: the model's configuration and weights and,
from training, whatever state resumes it, in one file written atomically and read
without running code (``weights_only``)."""
from __future__ import annotations

import inspect
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
    """The checkpoint's contents, verified; FileNotFoundError, or ValueError/TypeError naming
    the file and what is wrong.

    Read with ``weights_only=True``: a checkpoint cannot run code when loaded. Before the
    model is built, the archive's CRCs, the configuration (known keys, types and the model's
    bounds) and the weights (the names and shapes the configuration needs, finite values)
    are checked, so a damaged file is refused in milliseconds instead of giving NaN
    scores, or a minute of allocation. Configuration keys the file lacks (written by an
    older pycsa) are filled in with the model's defaults.
    """
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"checkpoint: {path} is a directory, not a checkpoint file")
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
    missing = [k for k in ("model_config", "state_dict") if k not in payload]
    if missing:
        raise ValueError(f"checkpoint: {path} lacks {' and '.join(missing)}: the file is damaged or was not "
                         "written by pycsa")
    model = _model_class(fmt)
    if model is not None:
        payload["model_config"] = _checked_config(path, model, payload["model_config"])
        _check_weights(path, model, payload["model_config"], payload["state_dict"])
    return payload


def _model_class(fmt: str):
    # imported here: the model modules import this one
    if fmt == "pycsa.csa":
        from .csa.model import CSA
        return CSA
    if fmt == "pycsa.rrt":
        from .rrt.model import RRT
        return RRT
    return None


def _checked_config(path, model, config) -> dict:
    if not isinstance(config, dict):
        raise TypeError(f"checkpoint: {path}: model_config is a {type(config).__name__}, not a dict: "
                        "the file is damaged or was not written by pycsa")
    params = inspect.signature(model).parameters
    unknown = sorted(str(k) for k in config if k not in params)
    if unknown:
        raise ValueError(f"checkpoint: {path}: model_config has keys {model.__name__} does not know: "
                         f"{', '.join(unknown)} (written by a newer pycsa, or damaged)")
    filled = [k for k in params if k not in config]
    full = {k: p.default for k, p in params.items()} | config
    try:
        return model.check_config(full)
    except (TypeError, ValueError) as exc:
        note = f" (the file lacks {', '.join(filled)}: defaults used)" if filled else ""
        raise type(exc)(f"checkpoint: {path}: model_config {exc}{note}") from None


def _check_weights(path, model, config: dict, state) -> None:
    """The tensors the configuration needs, by name and shape, all finite; the model is built
    on the meta device, which allocates nothing."""
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint: {path}: state_dict is a {type(state).__name__}, not a dict of tensors")
    with torch.device("meta"):
        want = model(**config).state_dict()
    missing = [k for k in want if k not in state]
    extra = [str(k) for k in state if k not in want]
    if missing or extra:
        parts = ([f"lacks {_few(missing)}"] if missing else []) + ([f"has unexpected {_few(extra)}"] if extra else [])
        raise ValueError(f"checkpoint: {path}: state_dict {' and '.join(parts)}: the weights do not fit the "
                         "stored configuration")
    for name, ref in want.items():
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"checkpoint: {path}: state_dict[{name!r}] is a {type(t).__name__}, not a tensor")
        # torch.load builds sparse, quantized and float8 tensors too; the checks below (and
        # load_state_dict's copy) are not implemented for all of them
        if t.layout != torch.strided:
            layout = str(t.layout).removeprefix("torch.")
            raise ValueError(f"checkpoint: {path}: state_dict[{name!r}] is a {layout} tensor; the model's weights "
                             "are dense: the file was not written by pycsa")
        kinds = _FLOAT_WEIGHTS if ref.is_floating_point() else _INT_WEIGHTS
        if t.dtype not in kinds:
            raise ValueError(f"checkpoint: {path}: state_dict[{name!r}] has dtype {t.dtype}; this weight must be "
                             f"one of {', '.join(str(d).removeprefix('torch.') for d in kinds)}")
        if t.shape != ref.shape or t.is_floating_point() != ref.is_floating_point():
            raise ValueError(f"checkpoint: {path}: state_dict[{name!r}] is {t.dtype} {tuple(t.shape)} but the "
                             f"stored configuration needs {ref.dtype} {tuple(ref.shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"checkpoint: {path}: state_dict[{name!r}] holds NaN or inf: the model diverged "
                             "in training, or the file is damaged")


_FLOAT_WEIGHTS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_INT_WEIGHTS = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _few(names: list) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
