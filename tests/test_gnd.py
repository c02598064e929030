"""load_gnd: the real Revisited Oxford/Paris files load, hostile or malformed pickles are refused."""
from __future__ import annotations

import builtins
import os
import pickle

import numpy as np
import pytest

from pycsa.datasets import load_gnd


@pytest.mark.parametrize("name, n_images", [("gnd_roxford5k.pkl", 4993), ("gnd_rparis6k.pkl", 6322)])
def test_real_files_load(shared_data, name, n_images):
    g = load_gnd(shared_data / "revisited" / name)
    assert type(g) is dict
    assert len(g["qimlist"]) == 70
    assert len(g["imlist"]) == n_images
    assert len(g["gnd"]) == 70
    for e in g["gnd"]:
        assert {"easy", "hard", "junk", "bbx"} <= set(e)
        assert all(0 <= i < n_images for k in ("easy", "hard", "junk") for i in e[k])


def test_real_file_accepts_str_path(shared_data):
    g = load_gnd(str(shared_data / "revisited" / "gnd_roxford5k.pkl"))
    assert len(g["gnd"]) == 70


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_gnd(tmp_path / "nope.pkl")


class _SystemCall:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalCall:
    def __init__(self, src):
        self.src = src

    def __reduce__(self):
        return (builtins.eval, (self.src,))


def _write(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_os_system_pickle_is_refused_without_running(tmp_path, protocol):
    flag = tmp_path / "pwned_system"
    payload = {"imlist": [], "qimlist": [], "gnd": [], "x": _SystemCall(f"touch '{flag}'")}
    bad = _write(tmp_path / "bad.pkl", payload, protocol)
    with pytest.raises(ValueError, match="bad.pkl"):
        load_gnd(bad)
    assert not flag.exists()


def test_eval_pickle_is_refused_without_running(tmp_path):
    flag = tmp_path / "pwned_eval"
    src = f"__import__('pathlib').Path({str(flag)!r}).touch()"
    bad = _write(tmp_path / "bad.pkl", _EvalCall(src))
    with pytest.raises(ValueError, match="builtins.eval"):
        load_gnd(bad)
    assert not flag.exists()


def test_any_global_is_refused(tmp_path):
    # the official files need no global, so even harmless-looking ones are refused
    arr = _write(tmp_path / "arr.pkl", {"imlist": ["a"], "qimlist": ["q"],
                                        "gnd": [{"easy": np.array([0]), "hard": [], "junk": []}]})
    with pytest.raises(ValueError, match="arr.pkl"):
        load_gnd(arr)


def test_not_a_pickle(tmp_path):
    p = tmp_path / "junk.pkl"
    p.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError, match="junk.pkl"):
        load_gnd(p)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pkl"):
        load_gnd(empty)


def _good():
    return {"imlist": ["a", "b", "c"], "qimlist": ["q"],
            "gnd": [{"easy": [0], "hard": [1], "junk": [2], "bbx": [0.0, 0.0, 1.0, 1.0]}]}


def test_minimal_valid_file(tmp_path):
    g = load_gnd(_write(tmp_path / "ok.pkl", _good()))
    assert g == _good()


@pytest.mark.parametrize("key", ["imlist", "qimlist", "gnd"])
def test_missing_top_level_key(tmp_path, key):
    obj = _good()
    del obj[key]
    with pytest.raises(ValueError, match=r"bad\.pkl.*" + key):
        load_gnd(_write(tmp_path / "bad.pkl", obj))


@pytest.mark.parametrize("key", ["easy", "hard", "junk"])
def test_entry_missing_key(tmp_path, key):
    obj = _good()
    del obj["gnd"][0][key]
    with pytest.raises(ValueError, match=r"bad\.pkl.*gnd\[0\].*" + key):
        load_gnd(_write(tmp_path / "bad.pkl", obj))


def test_wrong_shapes_and_indices(tmp_path):
    for mutate in (
        lambda o: o.__setitem__("gnd", "x"),
        lambda o: o["gnd"].append({"easy": [], "hard": [], "junk": []}),  # 2 entries, 1 query
        lambda o: o["gnd"][0].__setitem__("easy", [3]),  # outside imlist
        lambda o: o["gnd"][0].__setitem__("junk", [-1]),
        lambda o: o["gnd"][0].__setitem__("hard", [0.5]),
        lambda o: o["gnd"].__setitem__(0, [0, 1]),
    ):
        obj = _good()
        mutate(obj)
        with pytest.raises(ValueError, match="bad.pkl"):
            load_gnd(_write(tmp_path / "bad.pkl", obj))
    with pytest.raises(ValueError, match="bad.pkl"):
        load_gnd(_write(tmp_path / "bad.pkl", [1, 2, 3]))
