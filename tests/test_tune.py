"""pycsa.tune and `pycsa tune`: the search finds planted optima, keeps defaults against noise,
honours its budget, and its result drives `pycsa eval/rerank --config` and create_from_config."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pycsa
from pycsa.cli import main
from pycsa.datasets import load_retrieval_features
from pycsa.ranking import Ranking, Reranker, register
from pycsa.tune import Scorer, create_from_config, load_config, search_space, tune, tune_method


def _labelled(n_classes=12, per_class=10, dim=24, noise=0.9, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    X = centers[labels] + noise * rng.standard_normal((labels.size, dim))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), labels


class _FS:  # the parts of a FeatureSet the class-mAP scorer reads
    def __init__(self, X, y):
        self.queries = self.database = X
        self.query_labels = self.db_labels = y
        self.queries_are_database = True


class PlantedK(Reranker):
    """The input ranking when k == 7; otherwise each query's top-10 reversed (worse)."""
    search_space = {"k": (1, 3, 5, 7, 9, 11), "unused": (0.0, 1.0)}

    def __init__(self, k: int = 1, unused: float = 0.0, extra: int = 0):  # extra: outside the search space
        self.k, self.unused = k, unused

    def _rerank(self, Q, X, ranking, progress):
        if self.k == 7:
            return ranking
        idx, sc = ranking.indices.clone(), ranking.scores.clone()
        idx[:, :10] = idx[:, :10].flip(1)
        return Ranking(idx, sc)


class NoisyK(Reranker):
    """k == 4 swaps two items at the end of every ranking: a change far below any real gain."""
    search_space = {"k": (2, 4, 6)}

    def __init__(self, k: int = 2):
        self.k = k

    def _rerank(self, Q, X, ranking, progress):
        idx = ranking.indices.clone()
        if self.k == 4:
            idx[:, -2:] = idx[:, -2:].flip(1)
        return Ranking(idx, ranking.scores)


@pytest.fixture(autouse=True, scope="module")
def toy_rerankers():
    """Registered for this module's tests only: other tests list every registered method."""
    from pycsa.ranking import _REGISTRY

    for name, cls in (("planted_k_test", PlantedK), ("noisy_k_test", NoisyK)):
        register(name)(cls)
    yield
    for name in ("planted_k_test", "noisy_k_test"):
        _REGISTRY.pop(name, None)


def _ranking(X):
    s, i = pycsa.search(X, X, X.shape[0])
    return Ranking(i, s)


def test_the_search_finds_a_planted_best_k():
    X, y = _labelled()
    scorer = Scorer("classes", _FS(X, y))
    r = tune_method("planted_k_test", X, X, _ranking(X), scorer)
    assert r.stages == [("planted_k_test", {"k": 7, "unused": 0.0})]
    assert r.score == pytest.approx(scorer(_ranking(X)))  # the input ranking, i.e. cosine
    assert r.score > r.default_score + 1
    assert r.evaluations <= 1 + 5 + 1 + 5  # one round to find k, one to confirm nothing moves
    # every scored setting is recorded: the start first, each k once, the best among them
    assert len(r.trials) == r.evaluations and r.trials[0] == ([{}], r.default_score)
    assert {moved[0].get("k", 1) for moved, _ in r.trials} == {1, 3, 5, 7, 9, 11}
    assert dict((tuple(sorted(m[0].items())), s) for m, s in r.trials)[(("k", 7),)] == r.score
    assert max(s for _, s in r.trials) == r.score
    entry = r.to_json()
    assert entry["trials"][0] == {"moved": [{}], "score": round(r.default_score, 4)}
    assert json.loads(json.dumps(entry))["trials"] == entry["trials"]


def test_a_gain_within_noise_keeps_the_default():
    X, y = _labelled(seed=1)
    r = tune_method("noisy_k_test", X, X, _ranking(X), Scorer("classes", _FS(X, y)))
    assert r.stages[0][1] == {"k": 2} and r.score == r.default_score


def test_real_methods_tune_to_at_least_their_defaults():
    X, y = _labelled(seed=2)
    cfg = tune(["alpha_qe", "gnn"], X, X, Scorer("classes", _FS(X, y)))
    for entry in cfg["methods"].values():
        assert entry["score"] >= entry["default_score"]
    assert cfg["best"] in ("alpha_qe", "gnn") and cfg["metric"] == "mAP"


def test_sizes_are_capped_at_the_database():
    assert search_space("gnn", 12)["k1"] == (5, 10)
    assert search_space("alpha_qe", 2)["k"] == (1, 2)
    assert search_space("planted_k_test")["k"] == (1, 3, 5, 7, 9, 11)


def test_the_budget_stops_the_search():
    X, y = _labelled(seed=3)
    r = tune_method("planted_k_test", X, X, _ranking(X), Scorer("classes", _FS(X, y)), deadline=0.0)
    assert r.stopped_by_budget and r.evaluations == 1 and r.stages[0][1]["k"] == 1


def test_config_round_trip_and_create_from_config(tmp_path):
    X, y = _labelled(seed=4)
    cfg = tune(["planted_k_test", "alpha_qe"], X, X, Scorer("classes", _FS(X, y)))
    path = tmp_path / "t.json"
    path.write_text(json.dumps(cfg))
    r = create_from_config(path, "planted_k_test")
    assert isinstance(r, PlantedK) and r.k == 7
    best = create_from_config(str(path))
    assert best.name == cfg["best"]
    chain = create_from_config(load_config(path), "alpha_qe+planted_k_test")  # each stage's own tuning
    assert chain.rerankers[1].k == 7 and chain.rerankers[0].k == cfg["methods"]["alpha_qe"]["stages"][0][1]["k"]
    with pytest.raises(ValueError, match="was not tuned"):
        create_from_config(path, "gnn")


@pytest.mark.parametrize("text, words", [("{", "not a JSON file"), ('{"format": 9, "methods": {}}', "not a `pycsa tune`"),
                                         ('{"format": 1, "methods": {"gnn": {"stages": [["dba", {}]]}}}', "valid 'stages'")])
def test_bad_configs_are_refused_by_name(tmp_path, text, words):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ValueError, match=words):
        load_config(tmp_path / "bad.json")


def _features_file(tmp_path):
    X, y = _labelled(n_classes=16, per_class=12, seed=5)
    np.savez(tmp_path / "f.npz", feats=X, labels=y)
    return tmp_path / "f.npz"


def test_cli_tune_then_eval_and_rerank_with_the_config(tmp_path, capsys):
    f = _features_file(tmp_path)
    out = tmp_path / "tuned.json"
    assert main(["tune", "--features", str(f), "--class-split", "first", "--method", "alpha_qe,planted_k_test,gnn",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "planted_k_test" in text and "k=7" in text and f"wrote {out}" in text
    cfg = load_config(out)
    assert cfg["class_split"] == "first" and cfg["protocol"] == "classes" and set(cfg["methods"]) == {
        "alpha_qe", "planted_k_test", "gnn"}

    assert main(["eval", "--features", str(f), "--class-split", "second", "--config", str(out),
                 "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert f"planted_k_test: tuned parameters from {out}: planted_k_test(k=7, unused=0.0)" in text
    rows = {r["method"]: r["mAP"] for r in json.loads((tmp_path / "e.json").read_text())["rows"]}
    assert set(rows) == {"cosine", "alpha_qe", "planted_k_test", "gnn"}  # 'all' = what was tuned
    assert rows["planted_k_test"] == rows["cosine"]  # k=7 keeps the input ranking

    # the same re-ranker from the API gives the eval's ranking
    fs = load_retrieval_features(f).class_half("second")
    r = create_from_config(out, "gnn")
    new = r.rerank(fs.queries, fs.database, _ranking(fs.database))
    assert np.asarray(new.indices).shape[0] == fs.queries.shape[0]

    assert main(["rerank", "--features", str(f), "--method", "planted_k_test", "--config", str(out),
                 "--out", str(tmp_path / "r.npz")]) == 0
    assert "tuned parameters" in capsys.readouterr().out


def test_cli_tune_errors(tmp_path, capsys):
    f = _features_file(tmp_path)
    assert main(["tune", "--features", str(f), "--out", str(tmp_path / "t.txt")]) == 2
    assert "must end in .json" in capsys.readouterr().err
    assert main(["tune", "--features", str(f), "--budget", "0", "--out", str(tmp_path / "t.json")]) == 2
    assert "--budget" in capsys.readouterr().err
    np.savez(tmp_path / "nolabels.npz", feats=np.eye(5, dtype=np.float32))
    assert main(["tune", "--features", str(tmp_path / "nolabels.npz"), "--out", str(tmp_path / "t.json")]) == 2
    assert "has no labels" in capsys.readouterr().err
    assert main(["eval", "--features", str(f), "--config", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_tune_makes_the_output_folder_and_refuses_rrt(tmp_path, capsys):
    f = _features_file(tmp_path)
    out = tmp_path / "new" / "dir" / "t.json"
    assert main(["tune", "--features", str(f), "--method", "aqe", "--out", str(out)]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["tune", "--features", str(f), "--method", "rrt", "--checkpoint", "rrt=x.pt", "--out",
                 str(out)]) == 2
    assert "rrt cannot be tuned yet" in capsys.readouterr().err


def test_reid_is_scored_by_the_rankings_order_not_its_scores():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 8)).astype(np.float32)

    class FS:
        database = X
        query_labels = np.array([0, 1])
        db_labels = np.repeat(np.arange(10), 2)
        query_cams = np.array([0, 0])
        db_cams = np.ones(20, dtype=int)

    order = np.stack([np.r_[0, 1, np.arange(2, 20)], np.r_[2, 3, np.arange(4, 20), 0, 1]])
    rising = np.tile(np.linspace(0, 1, 20), (2, 1))  # scores that rise along the list: ignored
    assert Scorer("reid", FS())(Ranking(order, rising)) == pytest.approx(100.0)


def test_a_chain_keeps_its_first_stage_as_tuned_alone(monkeypatch):
    """tune() runs single methods first; a chain's earlier stage is then fixed at its own tuned
    settings and only the later stages are searched, while default_score is still the chain at
    its defaults."""
    X, y = _labelled(seed=6)
    scorer = Scorer("classes", _FS(X, y))
    built = []
    real_init = PlantedK.__init__

    def spy(self, k=1, unused=0.0, extra=0):
        built.append(k)
        real_init(self, k, unused, extra)

    monkeypatch.setattr(PlantedK, "__init__", spy)
    cfg = tune(["planted_k_test+noisy_k_test", "planted_k_test"], X, X, scorer)
    chain = cfg["methods"]["planted_k_test+noisy_k_test"]
    assert list(cfg["methods"]) == ["planted_k_test", "planted_k_test+noisy_k_test"]
    assert chain["stages"][0] == ["planted_k_test", {"k": 7, "unused": 0.0}]
    assert chain["stages"][1] == ["noisy_k_test", {"k": 2}]
    alone = cfg["methods"]["planted_k_test"]["evaluations"]
    # the chain's search built the first stage at k=7 only, plus once at its default for the record
    assert sorted(set(built[alone:])) == [1, 7] and built[alone:].count(1) == 1
    assert chain["evaluations"] == 1 + 2  # the start, then noisy_k's other two values
    assert chain["score"] == pytest.approx(scorer(_ranking(X)))
    assert chain["default_score"] == pytest.approx(cfg["methods"]["planted_k_test"]["default_score"])
    assert chain["score"] > chain["default_score"] + 1
    reports = []
    tune(["planted_k_test", "planted_k_test+noisy_k_test"], X, X, scorer, report=reports.append)
    assert reports[-1].endswith("; planted_k_test as tuned alone")


def test_fixed_stages_are_checked():
    X, y = _labelled(seed=7)
    scorer = Scorer("classes", _FS(X, y))
    with pytest.raises(ValueError, match="fixed_stages: expected"):
        tune_method("planted_k_test+noisy_k_test", X, X, _ranking(X), scorer, fixed_stages={2: {"k": 7}})
    with pytest.raises(ValueError, match="fixed_stages: expected"):
        tune_method("planted_k_test", X, X, _ranking(X), scorer, fixed_stages={0: 7})
    with pytest.raises(ValueError, match=r"fixed_stages: stage 1 of 'planted_k_test\+csa' \(csa\) is learned"):
        tune_method("planted_k_test+csa", X, X, _ranking(X), scorer, learned={"csa": {"checkpoint": "m.pt"}},
                    fixed_stages={1: {"k": 8}})


def test_a_fixed_parameter_outside_the_search_space_is_recorded():
    X, y = _labelled(seed=8)
    r = tune_method("planted_k_test+noisy_k_test", X, X, _ranking(X), Scorer("classes", _FS(X, y)),
                    fixed_stages={0: {"k": 7, "extra": 2}})
    assert r.stages[0] == ("planted_k_test", {"k": 7, "unused": 0.0, "extra": 2})
