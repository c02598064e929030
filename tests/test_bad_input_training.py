"""Bad input to tuning, training and the learned re-rankers is refused by name, before any
work, and a score that is not a number never becomes "tuned" parameters."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import pycsa
from pycsa.cli import main
from pycsa.datasets.local import LocalDescriptors
from pycsa.rerank.checkpoint import save_checkpoint
from pycsa.rerank.rrt.train import FORMAT as RRT_FORMAT
from pycsa.tune import Scorer, create_from_config, load_config, tune, tune_method

BAD = (ValueError, TypeError, IndexError)


def _unit(n, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _named(exc_info, name):
    assert str(exc_info.value).startswith(f"{name}:"), str(exc_info.value)


# ------------------------------------------------------------------ 1: NaN scores


def _no_hard_positives(tmp_path):
    X = _unit(200)
    np.savez(tmp_path / "F.npz", queries=X[:10].copy(), database=X)
    gnd = {"imlist": [f"im{i}" for i in range(200)], "qimlist": [f"q{i}" for i in range(10)],
           "gnd": [{"easy": [i + 10], "hard": [], "junk": []} for i in range(10)]}
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    return tmp_path / "F.npz", tmp_path / "gnd.pkl"


def test_cli_tune_refuses_a_nan_score_and_writes_nothing(tmp_path, capsys):
    f, gnd = _no_hard_positives(tmp_path)
    out = tmp_path / "t.json"
    assert main(["tune", "--features", str(f), "--gnd", str(gnd), "--method", "alpha_qe,diffusion",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pycsa: error: scorer:") and "hard positive" in err[0]
    assert not out.exists() and not list(tmp_path.glob("t.json*"))


def test_a_nan_score_is_an_error_not_an_accepted_trial():
    X = _unit(200)
    s, i = pycsa.search(X[:10], X, 200)
    with pytest.raises(ValueError) as e:
        tune_method("alpha_qe", X[:10], X, pycsa.Ranking(i, s), lambda r: float("nan"))
    _named(e, "scorer")
    with pytest.raises(ValueError) as e:
        tune(["alpha_qe"], X[:10], X, lambda r: float("inf"))
    _named(e, "scorer")
    with pytest.raises(TypeError) as e:
        tune(["alpha_qe"], X[:10], X, lambda r: "good")
    _named(e, "scorer")


def test_configs_with_nan_scores_are_refused(tmp_path):
    cfg = {"format": 1, "methods": {"alpha_qe": {"stages": [["alpha_qe", {"k": 20, "alpha": 5.0}]],
                                                 "score": float("nan"), "default_score": float("nan")}},
           "best": "alpha_qe"}
    (tmp_path / "t.json").write_text(json.dumps(cfg))  # what an older `pycsa tune` wrote
    with pytest.raises(ValueError, match="not a finite number") as e:
        load_config(tmp_path / "t.json")
    _named(e, "config")


# ------------------------------------------------------------------ 2: training parameters


def _labelled(n=40, d=16, classes=4):
    return _unit(n, d), np.repeat(np.arange(classes), n // classes)


@pytest.mark.parametrize("param, value", [
    ("drop_path", 1.0), ("dropout", 1.0), ("dropout", -0.1), ("tau", 0.0), ("tau", float("nan")),
    ("lr", 0.0), ("lr", float("inf")), ("lr", "abc"), ("lam", -1.0), ("momentum", 1.0), ("weight_decay", -1e-3),
    ("warmup_epochs", 2.7), ("warmup_epochs", -1), ("amp", "no"), ("val_k", 0), ("val_k", -3), ("seed", 0.5),
    ("seed", -1), ("device", "gpu"), ("device", 3.5), ("K", 2.0), ("L", "8"), ("optimizer", "adam"),
    ("checkpoint", 5), ("on_epoch", "print"),
])
def test_csa_train_refuses_bad_parameters_by_name(param, value):
    X, y = _labelled()
    kwargs = dict(K=8, L=8, dim=16, depth=1, heads=2, epochs=1, batch_size=16, val_features=X, val_labels=y)
    with pytest.raises(BAD) as e:
        pycsa.csa.train(X, y, **{**kwargs, param: value})
    _named(e, param)


def test_csa_train_needs_val_labels_with_val_features():
    X, y = _labelled()
    with pytest.raises(ValueError) as e:
        pycsa.csa.train(X, y, K=8, L=8, dim=16, depth=1, heads=2, epochs=1, val_features=X)
    _named(e, "val_labels")
    with pytest.raises(TypeError) as e:
        pycsa.csa.train(X, y, K=8, L=8, dim=16, depth=1, heads=2, epochs=1, val_features=X,
                        val_labels=np.array(["a"] * 40))
    _named(e, "val_labels")


def _local(n, dim=8, per_image=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LocalDescriptors(torch.randn(n * per_image, dim, generator=g),
                            torch.arange(0, n * per_image + 1, per_image), torch.zeros(n * per_image, dtype=torch.long))


@pytest.mark.parametrize("param, value", [
    ("dropout", 1.0), ("lr", 0.0), ("lr", "abc"), ("weight_decay", -1.0), ("match_init", "abc"),
    ("match_init", float("nan")), ("augment", "no"), ("max_local", 0), ("val_topk", 0), ("seed", 0.5),
    ("device", "gpu"), ("global_skip", -1.0), ("local", "x"), ("labels", np.array(["a"] * 20)),
    ("global_features", np.full((20, 6), np.nan, dtype=np.float32)), ("val", (1, 2)), ("checkpoint", 5),
])
def test_rrt_train_refuses_bad_parameters_by_name(param, value):
    G, y = _unit(20, 6), np.repeat(np.arange(4), 5)
    kwargs = dict(global_features=G, local=_local(20), labels=y, dim=8, depth=1, heads=2, ffn=16, epochs=1, topk=5)
    with pytest.raises(BAD) as e:
        pycsa.rrt.train(**{**kwargs, param: value})
    _named(e, param)


# ------------------------------------------------------------------ 3: learned re-rankers' constructors


@pytest.fixture
def csa_ckpt(tmp_path):
    path = tmp_path / "csa.pt"
    pycsa.csa.save_checkpoint(path, pycsa.csa.CSA(num_anchors=8, dim=16, depth=1, heads=2))
    return path


@pytest.mark.parametrize("param, value", [
    ("num_anchors", "8"), ("num_anchors", 8.0), ("dtype", "float8"), ("dtype", np.float32), ("dtype", torch.int32),
    ("cuda_graphs", "no"), ("model", "x"), ("checkpoint", 5), ("k", 0), ("k", 2.5), ("batch_size", 0),
    ("device", "gpu"),
])
def test_csa_reranker_refuses_bad_arguments_by_name(csa_ckpt, param, value):
    kwargs = {"checkpoint": csa_ckpt, param: value}
    with pytest.raises(BAD) as e:
        pycsa.create("csa", **kwargs)
    _named(e, param)


def test_csa_reranker_dtype_names_are_mapped(csa_ckpt):
    X = _unit(30)
    s, i = pycsa.search(X, X, 30)
    r = pycsa.create("csa", checkpoint=csa_ckpt, dtype="float32", k=10)
    assert r.dtype is torch.float32
    want = pycsa.create("csa", checkpoint=csa_ckpt, dtype=torch.float32, k=10).rerank(X, X, pycsa.Ranking(i, s))
    got = r.rerank(X, X, pycsa.Ranking(i, s))
    np.testing.assert_array_equal(np.asarray(got.indices), np.asarray(want.indices))


@pytest.fixture
def rrt_ckpt(tmp_path):
    path = tmp_path / "rrt.pt"
    save_checkpoint(path, pycsa.rrt.RRT(global_dim=6, dim=8, depth=1, heads=2, ffn=16, num_scales=1), fmt=RRT_FORMAT)
    return path


@pytest.mark.parametrize("param, value", [
    ("locals", "x"), ("query_locals", np.zeros((3, 8))), ("model", "x"), ("checkpoint", 5), ("dtype", "half"),
    ("top", 0), ("batch_pairs", -1), ("max_local", 0), ("max_local", 1.5), ("device", "gpu"),
])
def test_rrt_reranker_refuses_bad_arguments_by_name(rrt_ckpt, param, value):
    kwargs = {"checkpoint": rrt_ckpt, param: value}
    with pytest.raises(BAD) as e:
        pycsa.create("rrt", **kwargs)
    _named(e, param)
    with pytest.raises(TypeError) as e:
        pycsa.create("rrt", checkpoint=rrt_ckpt).fit(_unit(4, 6), locals="x")
    _named(e, "locals")


# ------------------------------------------------------------------ 4: csa_scores


@pytest.mark.parametrize("param, value", [("k", 0), ("k", -1), ("k", 3.0), ("batch_size", 0), ("dtype", "x")])
def test_csa_scores_refuses_bad_arguments_by_name(param, value):
    model = pycsa.csa.CSA(num_anchors=8, dim=16, depth=1, heads=2).eval()
    X = torch.as_tensor(_unit(30))
    _, i = pycsa.search(X, X, 30)
    kwargs = dict(k=10, batch_size=4)
    with pytest.raises(BAD) as e:
        pycsa.csa.csa_scores(model, X, X, i, **{**kwargs, param: value})
    _named(e, param)


def test_csa_scores_takes_numpy_and_k_one_rescores_nothing():
    model = pycsa.csa.CSA(num_anchors=8, dim=16, depth=1, heads=2).eval()
    X = _unit(30)
    _, i = pycsa.search(X, X, 30)
    got = pycsa.csa.csa_scores(model, X, X, np.asarray(i), 10, batch_size=7)
    want = pycsa.csa.csa_scores(model, torch.as_tensor(X), torch.as_tensor(X), torch.as_tensor(i), 10)
    assert isinstance(got, np.ndarray) and got.shape == (30, 9)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)
    assert pycsa.csa.csa_scores(model, X, X, np.asarray(i), 1).shape == (30, 0)


# ------------------------------------------------------------------ 5: tune configs


_GOOD = {"format": 1, "methods": {"alpha_qe": {"stages": [["alpha_qe", {"k": 3, "alpha": 2.0}]], "score": 50.0,
                                               "default_score": 40.0}}, "best": "alpha_qe"}


@pytest.mark.parametrize("change, words", [
    ({"methods": {"alpha_qe": {"stages": [[]]}}}, "methods['alpha_qe']"),
    ({"methods": {"alpha_qe": {"stages": [["alpha_qe"]]}}}, "methods['alpha_qe']"),
    ({"methods": {"alpha_qe": {"stages": "x"}}}, "methods['alpha_qe']"),
    ({"methods": {}}, "'methods' is empty"),
    ({"best": 5}, "'best'"),
    ({"best": ["x"]}, "'best'"),
    ({"best": "gnn"}, "'best'"),
])
def test_bad_config_structures_are_named(tmp_path, change, words):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**_GOOD, **change}))
    for config in ({**_GOOD, **change}, path):
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")) as e:
            create_from_config(config)
        _named(e, "config")
    assert str(path) in str(e.value)


def test_create_from_config_method_and_best():
    with pytest.raises(TypeError) as e:
        create_from_config(_GOOD, method=5)
    _named(e, "method")
    no_best = {k: v for k, v in _GOOD.items() if k != "best"}
    with pytest.raises(ValueError, match="names no 'best' method; pass method=, one of: alpha_qe") as e:
        create_from_config(no_best)
    _named(e, "config")
    assert create_from_config(no_best, "alpha_qe").k == 3
    with pytest.raises(TypeError) as e:
        create_from_config(5)
    _named(e, "config")


def test_cli_config_errors_are_one_line(tmp_path, capsys):
    X = _unit(20)
    np.savez(tmp_path / "f.npz", feats=X, labels=np.repeat(np.arange(4), 5))
    (tmp_path / "c.json").write_text(json.dumps({**_GOOD, "methods": {"alpha_qe": {"stages": [[]]}}}))
    (tmp_path / "d").mkdir()
    for config, words in ((tmp_path / "c.json", "has no valid 'stages'"), (tmp_path / "d", "is a directory")):
        assert main(["eval", "--features", str(tmp_path / "f.npz"), "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pycsa: error: config:") and words in err[0]


# ------------------------------------------------------------------ 6: tune's own arguments


def test_tune_takes_one_method_name_and_checks_its_arguments():
    X = _unit(40)
    out = tune("alpha_qe", X, X, lambda r: 1.0)
    assert list(out["methods"]) == ["alpha_qe"] and out["best"] == "alpha_qe"
    for kwargs, name, kind in ((dict(depth=0), "depth", ValueError), (dict(depth=2.5), "depth", TypeError),
                               (dict(budget=0), "budget", ValueError),
                               (dict(margin=float("nan")), "margin", ValueError)):
        with pytest.raises(kind) as e:
            tune(["alpha_qe"], X, X, lambda r: 1.0, **kwargs)
        _named(e, name)
    for methods, kind in ((["nope"], ValueError), ([], ValueError), ([5], TypeError), (5, TypeError)):
        with pytest.raises(kind) as e:
            tune(methods, X, X, lambda r: 1.0)
        _named(e, "methods")


def test_scorer_checks_its_protocol():
    with pytest.raises(ValueError) as e:
        Scorer("bogus", None)
    _named(e, "mode")
    with pytest.raises(ValueError) as e:
        Scorer("revisited", None)
    _named(e, "gnd")
