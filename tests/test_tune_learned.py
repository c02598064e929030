"""`pycsa tune --train csa`: CSA trained inside tune, scored cross-fitted (each query re-ranked by
a model that never saw its class), the final model saved beside the config and used by --config."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pycsa
from pycsa.cli import main
from pycsa.ranking import Ranking, Reranker
from pycsa.tune import create_from_config, search_space
from pycsa.tune_learned import CrossFitted, train_csa_for_tuning

from _clusters import clustered_features

TINY = dict(K=(8, 12), L=8, dim=16, depth=1, heads=1, dropout=0.0, drop_path=0.0, epochs=1, batch_size=8,
            optimizer="adamw", lr=1e-3, warmup_epochs=0, tau=1.0, lam=0.0, loss="positive", residual=True, perturb=0)


def _labelled(n=60, classes=6, d=16, seed=0):
    X, y = clustered_features(n, d, classes, seed)
    return X.numpy(), y.numpy()


class _Tag(Reranker):
    """Puts its tag in every score, to see which re-ranker handled a query."""

    def __init__(self, tag):
        self.tag = tag

    def _rerank(self, Q, X, ranking, progress):
        return Ranking(ranking.indices, torch.full_like(ranking.scores, float(self.tag)))


def test_cross_fitted_sends_each_query_to_its_folds_reranker():
    X, _ = _labelled(n=10)
    s, i = pycsa.search(X, X, 5)
    fold = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    out = CrossFitted([_Tag(10), _Tag(20)], fold).rerank(X, X, Ranking(i, s))
    assert np.array_equal(np.asarray(out.scores)[:, 0], np.where(fold == 0, 10.0, 20.0))
    assert np.array_equal(np.asarray(out.indices), np.asarray(i))
    with pytest.raises(ValueError, match="query_fold: folds must be 0..1"):
        CrossFitted([_Tag(1), _Tag(2)], np.array([0, 2]))
    with pytest.raises(ValueError, match="queries: 3 rows, but the folds were made for 10"):
        CrossFitted([_Tag(1), _Tag(2)], fold).rerank(X[:3], X, Ranking(i[:3], s[:3]))


@pytest.mark.parametrize("folds, expect", [(2, 2), (4, 4), (9, 6)])  # 9 folds of 6 classes: one per class
def test_each_fold_model_is_trained_without_its_queries_classes(monkeypatch, folds, expect):
    X, y = _labelled()
    seen = []
    real = pycsa.rerank.csa.train

    def spy(features, labels, **kw):
        seen.append(np.unique(np.asarray(labels)))
        return real(features, labels, **kw)

    monkeypatch.setattr(pycsa.rerank.csa, "train", spy)
    trained = train_csa_for_tuning(X, y, recipe=TINY, folds=folds)
    monkeypatch.undo()
    assert len(seen) == expect + 1 and np.array_equal(seen[-1], np.unique(y))  # the last: every class
    assert len(trained.folds) == expect and set(np.unique(trained.query_fold)) == set(range(expect))
    for f in range(expect):
        own = np.unique(y[trained.query_fold == f])
        # trained on every class but its fold's: each fold model sees (F-1)/F of them
        assert np.array_equal(np.union1d(own, seen[f]), np.unique(y)) and not set(own) & set(seen[f]), (f, own)
    sizes = [len(np.unique(y[trained.query_fold == f])) for f in range(expect)]
    assert max(sizes) - min(sizes) <= 1  # classes dealt evenly
    assert all(m.residual for m in trained.folds) and trained.final.residual


def test_fold_training_refusals():
    X, y = _labelled()
    with pytest.raises(ValueError, match="labels: training CSA inside tune needs at least 2 classes"):
        train_csa_for_tuning(X, np.zeros(len(y), dtype=int), recipe=TINY)
    with pytest.raises(ValueError, match="folds: must be an int >= 2"):
        train_csa_for_tuning(X, y, recipe=TINY, folds=1)


def test_csa_serving_k_is_searched():
    assert search_space("csa", 300) == {"k": (128, 256)}


def test_cli_tune_trains_csa_and_the_config_brings_its_model(tmp_path, capsys, monkeypatch):
    import pycsa.tune_learned as tl

    monkeypatch.setattr(tl, "CSA_RECIPE", TINY)  # a small model: the mechanics, not the accuracy
    X, y = _labelled()
    feats = tmp_path / "val.npz"
    np.savez(feats, feats=X, labels=y)
    out = tmp_path / "run" / "tuned.json"
    assert main(["tune", "--features", str(feats), "--method", "csa,gnn+csa", "--train", "csa", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "training the model for fold 4 of 4" in text and "tuned.csa.pt" in text
    cfg = json.loads(out.read_text())
    assert cfg["checkpoints"] == {"csa": "tuned.csa.pt"} and set(cfg["methods"]) == {"csa", "gnn+csa"}
    model = pycsa.csa.load_model(out.parent / "tuned.csa.pt")
    assert model.residual
    # the config brings its model: no --checkpoint needed, from another folder too
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--features", str(feats), "--config", str(out), "--method", "all"]) == 0
    table = capsys.readouterr().out
    assert "\ncsa " in table and "\ngnn+csa " in table
    r = create_from_config(out, "csa")
    assert isinstance(r, pycsa.csa.CSAReranker) and r.model.residual
    # --csa-k wins over the tuned k
    assert main(["eval", "--features", str(feats), "--config", str(out), "--method", "csa", "--csa-k", "20"]) == 0
    capsys.readouterr()
    # the model moved away from its config: named when a method needs it, not otherwise
    (out.parent / "tuned.csa.pt").rename(tmp_path / "elsewhere.pt")
    assert main(["eval", "--features", str(feats), "--config", str(out), "--method", "gnn"]) == 0
    capsys.readouterr()
    assert main(["eval", "--features", str(feats), "--config", str(out), "--method", "csa"]) == 2
    assert "names csa's checkpoint" in capsys.readouterr().err


def test_cli_tune_csa_k_pins_the_searched_k(tmp_path, capsys, monkeypatch):
    import pycsa.tune_learned as tl

    monkeypatch.setattr(tl, "CSA_RECIPE", TINY)
    X, y = _labelled(n=300, classes=10)
    feats = tmp_path / "val.npz"
    np.savez(feats, feats=X, labels=y)
    out = tmp_path / "t.json"
    assert main(["tune", "--features", str(feats), "--method", "csa", "--train", "csa", "--csa-k", "64",
                 "--out", str(out)]) == 0
    entry = json.loads(out.read_text())["methods"]["csa"]
    assert entry["stages"] == [["csa", {"k": 64}]] and entry["evaluations"] == 1
    capsys.readouterr()
    # unpinned, k is searched: the default 1,024 (the whole list here), then 128 and 256
    assert main(["tune", "--features", str(feats), "--method", "csa", "--train", "csa", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["methods"]["csa"]["evaluations"] == 3


def test_tune_with_a_checkpoint_and_csa_k(tmp_path, capsys):
    X, y = _labelled(n=300, classes=10)
    feats = tmp_path / "val.npz"
    np.savez(feats, feats=X, labels=y)
    ck = tmp_path / "c.pt"
    pycsa.csa.save_checkpoint(ck, pycsa.csa.CSA(num_anchors=8, dim=16, depth=1, heads=1))
    out = tmp_path / "t.json"
    assert main(["tune", "--features", str(feats), "--method", "csa", "--checkpoint", str(ck), "--csa-k", "50",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["methods"]["csa"]["stages"] == [["csa", {"k": 50}]]
    capsys.readouterr()
    assert main(["eval", "--features", str(feats), "--config", str(out), "--checkpoint", str(ck), "--method", "csa",
                 "--csa-k", "40"]) == 0


def test_train_needs_one_labelled_matrix(tmp_path, capsys):
    X, y = _labelled()
    feats = tmp_path / "qd.npz"
    np.savez(feats, queries=X[:10], database=X, query_labels=y[:10], db_labels=y)
    assert main(["tune", "--features", str(feats), "--method", "csa", "--train", "csa",
                 "--out", str(tmp_path / "t.json")]) == 2
    assert "needs one labelled matrix" in capsys.readouterr().err


def test_cli_tune_train_refusals(tmp_path, capsys):
    X, y = _labelled()
    feats = tmp_path / "val.npz"
    np.savez(feats, feats=X, labels=y)
    ck = tmp_path / "c.pt"
    pycsa.csa.save_checkpoint(ck, pycsa.csa.CSA(num_anchors=8, dim=16, depth=1, heads=1))
    out = str(tmp_path / "t.json")
    assert main(["tune", "--features", str(feats), "--method", "csa", "--train", "csa", "--checkpoint", str(ck),
                 "--out", out]) == 2
    assert "a checkpoint for it is given too" in capsys.readouterr().err
    assert main(["tune", "--features", str(feats), "--method", "gnn", "--train", "csa", "--out", out]) == 2
    assert "none of the methods uses it" in capsys.readouterr().err
    assert main(["tune", "--features", str(feats), "--method", "csa", "--folds", "3", "--out", out]) == 2
    assert "--folds: only with --train" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", "--features", str(feats), "--method", "csa", "--train", "csa", "--folds", "1", "--out", out])
    assert "argument --folds: must be an integer >= 2" in capsys.readouterr().err


def test_cli_tune_folds_sets_the_cross_fitting(tmp_path, capsys, monkeypatch):
    import pycsa.tune_learned as tl

    monkeypatch.setattr(tl, "CSA_RECIPE", TINY)
    X, y = _labelled()
    feats = tmp_path / "val.npz"
    np.savez(feats, feats=X, labels=y)
    assert main(["tune", "--features", str(feats), "--method", "csa", "--train", "csa", "--folds", "3",
                 "--out", str(tmp_path / "t.json")]) == 0
    text = capsys.readouterr().out
    assert "fold 3 of 3" in text and "of 4" not in text


def test_cli_tune_trains_a_model_over_k_reciprocal_for_its_chain(tmp_path, capsys, monkeypatch):
    import pycsa.tune_learned as tl

    monkeypatch.setattr(tl, "CSA_RECIPE", TINY)
    # a stage parameter away from its default: the chain must keep it, not search it
    monkeypatch.setattr(tl, "STAGE_RECIPES", {"k_reciprocal+csa": dict(TINY, stage="k_reciprocal",
                                                                       stage_params={"k1": 7})})
    X, y = _labelled()
    feats = tmp_path / "val.npz"
    np.savez(feats, feats=X, labels=y)
    out = tmp_path / "tuned.json"
    assert main(["tune", "--features", str(feats), "--method", "csa,k_reciprocal+csa", "--train", "csa",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tuned.k_reciprocal+csa.pt" in text and "over k_reciprocal" in text
    cfg = json.loads(out.read_text())
    assert cfg["checkpoints"] == {"csa": "tuned.csa.pt", "k_reciprocal+csa": "tuned.k_reciprocal+csa.pt"}
    entry = cfg["methods"]["k_reciprocal+csa"]
    assert entry["stages"][0] == ["k_reciprocal", {"k1": 7, "k2": 6, "lambda_value": 0.3}]
    # only CSA's k was searched: its default and the values tried
    assert entry["evaluations"] == len({1024, *search_space("csa", X.shape[0])["k"]})
    assert pycsa.csa.load_model(tmp_path / "tuned.csa.pt").stage is None
    assert pycsa.csa.load_model(tmp_path / "tuned.k_reciprocal+csa.pt").stage == "k_reciprocal"
    # each method gets its model from the config: the chain its own, csa the plain one
    chain = create_from_config(out, "k_reciprocal+csa")
    first, last = chain.rerankers
    assert last.model.stage == "k_reciprocal" and last.checkpoint.endswith("tuned.k_reciprocal+csa.pt")
    assert first.k1 == 7
    assert create_from_config(out, "csa").model.stage is None
    # a chain the config did not tune as a whole is put together from its entries: the plain model
    longer = create_from_config(out, "k_reciprocal+csa+alpha_qe")
    assert longer.rerankers[1].model.stage is None
    s, i = pycsa.search(X, X, X.shape[0])
    expect = chain.fit(X).rerank(X, X, Ranking(i, s))
    # --checkpoint csa=... beside --config wins for the chain too, as csa= does in create_from_config
    plain = str(tmp_path / "tuned.csa.pt")
    mine = create_from_config(out, "k_reciprocal+csa", csa={"checkpoint": plain})
    assert mine.rerankers[1].model.stage is None
    assert main(["rerank", "--features", str(feats), "--config", str(out), "--method", "k_reciprocal+csa",
                 "--checkpoint", f"csa={plain}", "--out", str(tmp_path / "mine.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "mine.npz")["indices"],
                          np.asarray(mine.fit(X).rerank(X, X, Ranking(i, s)).indices))
    # the CLI serves the same chain, with the same model, and scores it as the tuner did (on all classes)
    assert main(["rerank", "--features", str(feats), "--config", str(out), "--method", "k_reciprocal+csa",
                 "--out", str(tmp_path / "r.npz")]) == 0
    got = np.load(tmp_path / "r.npz")
    assert np.array_equal(got["indices"], np.asarray(expect.indices))
    assert main(["eval", "--features", str(feats), "--config", str(out), "--method", "all"]) == 0
    table = capsys.readouterr().out
    assert "\nk_reciprocal+csa " in table and "\ncsa " in table
    # a hand-edited config whose stage differs from the model's is refused, naming both
    cfg["methods"]["k_reciprocal+csa"]["stages"][0][1]["k1"] = 9
    out.write_text(json.dumps(cfg))
    assert main(["eval", "--features", str(feats), "--config", str(out), "--method", "k_reciprocal+csa"]) == 2
    assert "k_reciprocal tuned to" in capsys.readouterr().err


def test_a_stage_model_given_by_checkpoint_pins_its_stage_in_the_search(tmp_path):
    from pycsa.evaluate import class_map
    from pycsa.tune import tune_method

    X, y = _labelled()
    path = tmp_path / "kr.pt"
    recipe = {k: v for k, v in TINY.items()}
    pycsa.csa.train(X, y, stage="k_reciprocal", stage_params={"k1": 7}, checkpoint=path, **recipe)
    s, i = pycsa.search(X, X, X.shape[0])
    score = lambda r: 100 * class_map(np.asarray(r.indices), y, y, exclude_self=True)  # noqa: E731
    result = tune_method("k_reciprocal+csa", X, X, Ranking(i, s), score, learned={"csa": {"checkpoint": str(path)}})
    # k-reciprocal keeps the model's parameters (another k1 would be refused by the model's score check)
    assert result.stages[0] == ("k_reciprocal", {"k1": 7, "k2": 6, "lambda_value": 0.3})
    assert result.evaluations == len({1024, *search_space("csa", X.shape[0])["k"]})
    # the stage as tuned alone (tune()'s fixed_stages) gives way to the model's stage
    again = tune_method("k_reciprocal+csa", X, X, Ranking(i, s), score, learned={"csa": {"checkpoint": str(path)}},
                        fixed_stages={0: {"k1": 15, "k2": 6, "lambda_value": 0.0}})
    assert again.stages[0] == result.stages[0] and again.fixed_stages == ()
