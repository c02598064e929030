"""Load the Revisited Oxford/Paris ground truth (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``).

The files are pickles of a plain dict::

    {"imlist":  [str, ...],        # database image names (4,993 / 6,322)
     "qimlist": [str, ...],        # query image names (70)
     "gnd":     [{"easy": [int], "hard": [int], "junk": [int], "bbx": [float x4]}, ...]}

Indices in ``easy``/``hard``/``junk`` are 0-based positions in ``imlist``.

Unpickling runs whatever callables a pickle names, so the files are read with an
unpickler that resolves no globals at all: the official files consist only of
dicts, lists, strings, ints and floats, none of which need one. A pickle that
asks for any global (``os.system``, ``builtins.eval``, ``numpy`` reconstructors,
...) is refused before the global is looked up, so nothing it names can run.
"""
from __future__ import annotations

import io
import numbers
import os
import pickle
from pathlib import Path

from .._types import PathLike

_REQUIRED_TOP = ("imlist", "qimlist", "gnd")
_REQUIRED_ENTRY = ("easy", "hard", "junk")


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler that builds only built-in containers and scalars."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a ground-truth file")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a ground-truth file")


def _check_indices(values, where: str, n_db: int, path) -> None:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{path}: {where} is a {type(values).__name__}, expected a list of indices")
    for v in values:
        # bool is an Integral too, but a True/False index is certainly a corrupt file
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{path}: {where} holds {v!r}, expected integer indices")
        if not 0 <= v < n_db:
            raise ValueError(f"{path}: {where} holds index {v}, outside imlist (size {n_db})")


def _validate(obj, path) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a ground-truth file (top level is {type(obj).__name__}, expected dict)")
    missing = [k for k in _REQUIRED_TOP if k not in obj]
    if missing:
        raise ValueError(f"{path}: not a ground-truth file (missing keys {missing})")
    imlist, qimlist, gnd = obj["imlist"], obj["qimlist"], obj["gnd"]
    for key, value in (("imlist", imlist), ("qimlist", qimlist), ("gnd", gnd)):
        if not isinstance(value, list):
            raise ValueError(f"{path}: '{key}' is a {type(value).__name__}, expected a list")
    for key, names in (("imlist", imlist), ("qimlist", qimlist)):
        # image names are joined to directories later ("'int' and 'str'" there names nothing)
        bad = next((i for i, v in enumerate(names) if not isinstance(v, str)), None)
        if bad is not None:
            raise ValueError(f"{path}: '{key}'[{bad}] is {names[bad]!r} ({type(names[bad]).__name__}), "
                             "expected an image name (str)")
    if len(gnd) != len(qimlist):
        raise ValueError(f"{path}: 'gnd' has {len(gnd)} entries but 'qimlist' has {len(qimlist)}")
    for i, entry in enumerate(gnd):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: gnd[{i}] is a {type(entry).__name__}, expected a dict")
        missing = [k for k in _REQUIRED_ENTRY if k not in entry]
        if missing:
            raise ValueError(f"{path}: gnd[{i}] lacks keys {missing}")
        for k in _REQUIRED_ENTRY:
            _check_indices(entry[k], f"gnd[{i}]['{k}']", len(imlist), path)
    return dict(obj)


def load_gnd(path: PathLike) -> dict:
    """Read a Revisited Oxford/Paris ``gnd_*.pkl`` file safely and return its dict.

    Raises ``FileNotFoundError`` when ``path`` does not exist and ``ValueError``
    (naming the file) when it is a directory or not a well-formed ground-truth pickle: not a
    pickle, a pickle that requests any global (code execution), missing
    ``imlist``/``qimlist``/``gnd``, or a ``gnd`` entry without
    ``easy``/``hard``/``junk`` lists of valid ``imlist`` indices.
    """
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a ground-truth file (gnd_roxford5k.pkl, ...)")
    if not path.exists():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    data = path.read_bytes()
    try:
        obj = _NoGlobalsUnpickler(io.BytesIO(data)).load()
    # no global can resolve, so any exception here comes from malformed bytes
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable ground-truth pickle ({exc})") from exc
    return _validate(obj, path)
