"""CSA trained and served over a first stage (issue #18): the stage's leave-one-out ranking of
the database gives the lists, the residual's input scores and, as affinities, the stage's
scores between items (pycsa/rerank/csa/stage.py)."""
from __future__ import annotations

import json
import sys

import pytest
import torch

import pycsa
import pycsa.cli
from pycsa.csa import CSA, CSAReranker, csa_scores, load_model, train
from pycsa.ranking import resort_top
from pycsa.rerank.csa.stage import StageTable, draw_stage_params, stage_affinity, stage_table
from pycsa.rerank.csa.train import build_samples, make_batch

from _clusters import clustered_features

SMALL = dict(dim=32, depth=1, heads=1, dropout=0.0, drop_path=0.0)
TRAIN = dict(K=[12, 20], L=8, epochs=2, batch_size=16, optimizer="adamw", lr=3e-3, warmup_epochs=0, tau=0.5, lam=0.0,
             loss="positive", residual=True, **SMALL)


def _dense_stage(X, stage="k_reciprocal", params=None):
    """The stage's n x n scores, every row a query against all rows (the whole ranking)."""
    n = X.shape[0]
    s, i = pycsa.search(X, X, n)
    r = pycsa.create(stage, **(params or {})).rerank(X, X, pycsa.Ranking(i, s))
    S = torch.full((n, n), float("nan"))
    S.scatter_(1, torch.as_tensor(r.indices).long(), torch.as_tensor(r.scores).float())
    return S


def _reference_affinity(table: StageTable, own, ranks, L, input_scores):
    """stage_affinity by loops: A[b, i, j] = the stage's score of item i's row at anchor j, the
    row's lowest kept score when anchor j is not in it; a new query (own -1) from its scores."""
    B, R = ranks.shape
    A = torch.empty(B, R + 1, L)
    for b in range(B):
        items = [int(own[b])] + ranks[b].tolist()
        for i, item in enumerate(items):
            for j in range(L):
                anchor = items[j]
                if item < 0 or anchor < 0:
                    continue
                row = table.indices[item].tolist()
                A[b, i, j] = table.scores[item, row.index(anchor)] if anchor in row else table.scores[item, -1]
        if own[b] < 0:
            A[b, 0, 0] = table.self_score
            A[b, 1:, 0] = input_scores[b]
            A[b, 0, 1:] = input_scores[b, :L - 1]
    return A


@pytest.mark.parametrize("depth", [59, 13, 1])  # whole rows; rows shorter than the lists (the bound); one item
@pytest.mark.parametrize("stage", ["k_reciprocal", "gnn", "dba"])
def test_stage_affinity_is_the_stage_score_of_each_pair(stage, depth):
    X, _ = clustered_features(60, 16, 6)
    table = stage_table(X, stage, {}, depth)
    assert table.indices.shape == (60, min(depth + 1, 60))
    g = torch.Generator().manual_seed(1)
    own = torch.tensor([3, -1, 17, -1, 59])
    ranks = torch.stack([torch.randperm(60, generator=g)[:11] for _ in range(5)])
    ranks[0][ranks[0] == 3] = 4 if 4 not in ranks[0] else 5  # a query's own row is not its candidate
    ranks[2][ranks[2] == 17] = 18 if 18 not in ranks[2] else 19
    scores = torch.randn(5, 11, generator=g)
    got = stage_affinity(table, own, ranks, 8, scores, chunk=200)  # several blocks
    assert torch.equal(got, _reference_affinity(table, own, ranks, 8, scores))


def test_a_whole_table_gives_the_stage_matrix_and_its_lists():
    """With rows as deep as the set, the affinities are the stage's n x n scores themselves and
    the training lists are the stage's leave-one-out ranking."""
    X, _ = clustered_features(40, 16, 5)
    S = _dense_stage(X)
    table = stage_table(X, "k_reciprocal", {}, 39)
    ranks, scores = table.without_self(39)
    assert not (ranks == torch.arange(40)[:, None]).any()
    assert torch.allclose(scores, S.gather(1, ranks))
    own = torch.arange(40)
    A = stage_affinity(table, own, ranks[:, :15], 6)
    items = torch.cat([own[:, None], ranks[:, :15]], 1)
    assert torch.allclose(A, S[items[:, :, None], items[:, None, :6]])


def test_stage_training_batches_hold_the_stage_lists_scores_and_affinities():
    X, y = clustered_features(40, 16, 5)
    sets = build_samples([X], y, 12, 6, stage=("k_reciprocal", {}), stage_depth=39)
    S = _dense_stage(X)
    A, rel, base = make_batch(sets, torch.arange(40), 12, 6, torch.Generator().manual_seed(0))
    # permuted rows: every candidate's input score is its stage score, and its affinity row is
    # the stage's scores of it against the (permuted) anchors
    q = 7
    items = sets[0].ranks[q, :11].tolist()
    for i in range(1, 12):
        row = A[q, i]
        cand = [c for c in items if torch.allclose(S[c, q], row[0])]
        assert cand, "a candidate row's query column is its stage score"
    assert torch.allclose(torch.sort(base[q]).values, torch.sort(S[q, sets[0].ranks[q, :11]]).values)
    assert rel[:, 0].all() and rel.shape == (40, 12)


def test_train_over_a_stage_serves_after_it_and_beats_nothing_silently(tmp_path):
    X, y = clustered_features(80, 16, 8)
    path = tmp_path / "kr.pt"
    result = train(X, y, stage="k_reciprocal", stage_params={"k1": 10, "k2": 3}, checkpoint=path, **TRAIN)
    m = load_model(path)
    assert (m.stage, m.stage_params, m.stage_depth) == ("k_reciprocal", {"k1": 10, "k2": 3}, 20)
    assert torch.equal(m.gate, result.model.gate)
    chain = pycsa.create("k_reciprocal", k1=10, k2=3)
    s, i = pycsa.search(X, X, 80)
    first = chain.rerank(X, X, pycsa.Ranking(i, s))
    csa = CSAReranker(path, k=20)
    new = csa.rerank(X, X, first)
    assert torch.equal(torch.sort(new.indices, 1).values, torch.sort(first.indices, 1).values)
    assert torch.equal(new.indices[:, 0], torch.arange(80))  # leave-one-out: each row's own first
    assert not torch.equal(new.indices[:, 1:20], first.indices[:, 1:20])
    assert torch.equal(new.indices[:, 20:], first.indices[:, 20:])
    # the same with the query rows given as own, and with the queries as new items
    again = CSAReranker(path, k=20, leave_one_out=False).rerank(X, X, first, own=torch.arange(80))
    assert torch.equal(again.indices, new.indices)
    # a query that is not a database row: its own row and column from the ranking's scores
    Xd = X[10:]
    s2, i2 = pycsa.search(X[:10], Xd, 70)
    first2 = pycsa.create("k_reciprocal", k1=10, k2=3).rerank(X[:10], Xd, pycsa.Ranking(i2, s2))
    out2 = CSAReranker(path, k=20).rerank(X[:10], Xd, first2)
    assert torch.isfinite(out2.scores).all()
    # the chain by name, and the model's table kept for its database
    via = pycsa.Chain([pycsa.create("k_reciprocal", k1=10, k2=3), csa]).rerank(X, X, pycsa.Ranking(i, s))
    assert torch.equal(via.indices, new.indices)


def test_validation_of_a_stage_model_ranks_by_the_stage(tmp_path):
    X, y = clustered_features(80, 16, 8)
    result = train(X[:40], y[:40], val_features=X[40:], val_labels=y[40:], stage="k_reciprocal", **TRAIN)
    assert all(0.0 < r["val_map"] <= 1.0 for r in result.history)


@pytest.mark.parametrize("kwargs, match", [
    (dict(stage="k_reciprocal+gnn"), "one re-ranker"),
    (dict(stage="csa"), "training-free"),
    (dict(stage="nope"), "unknown re-ranker"),
    (dict(stage="superglobal"), "scores a pair by the list"),
    (dict(stage="k_reciprocal", stage_params=[1]), "stage_params"),
    (dict(stage="k_reciprocal", stage_params={"k1": 0}), "k1"),
    (dict(stage="k_reciprocal", stage_params={"bogus": 1}), "bogus"),
    (dict(stage_params={"k1": 5}), "without a stage"),
])
def test_bad_stages_are_refused_before_training(kwargs, match):
    X, y = clustered_features(40, 16, 5)
    with pytest.raises((ValueError, TypeError), match=match):
        train(X, y, **(TRAIN | kwargs))


@pytest.mark.parametrize("jitter, match", [
    ({"k1": [3, 9]}, "without a stage"),  # no stage given
    ([1, 2], "dict"),
    ({"k1": 5}, "low, high"),
    ({"k1": [9, 3]}, "low <= high"),
    ({"k1": [3, float("nan")]}, "finite"),
    ({"k1": [True, 3]}, "low, high"),
    ({"k1": [0, 5]}, "k1=0"),  # the stage's own check of a bound
    ({"bogus": [1, 2]}, "bogus"),
])
def test_bad_stage_jitter_is_refused_before_training(jitter, match):
    X, y = clustered_features(40, 16, 5)
    stage = {} if match == "without a stage" else {"stage": "k_reciprocal"}
    with pytest.raises((ValueError, TypeError), match="stage_jitter.*" + match):
        train(X, y, stage_jitter=jitter, **(TRAIN | stage))


def test_stage_jitter_draws_each_copys_stage_parameters_and_keeps_the_set_itself_at_the_served_ones():
    X, y = clustered_features(60, 16, 6)
    jitter = {"k1": (4, 12), "lambda_value": (0.1, 0.5)}
    sets = build_samples([X], y, 20, 8, perturb=3, gen=torch.Generator().manual_seed(5),
                         stage=("k_reciprocal", {"k2": 3}), stage_jitter=jitter)
    plain = build_samples([X], y, 20, 8, perturb=3, gen=torch.Generator().manual_seed(5),
                          stage=("k_reciprocal", {"k2": 3}))
    # the copies themselves are those of the run without jitter; the parameters are drawn after them
    assert all(torch.equal(a.X, b.X) for a, b in zip(sets, plain))
    assert torch.equal(sets[0].table.scores, plain[0].table.scores)  # the set itself: the served parameters
    # each copy's table is the stage's at the parameters drawn, in order, from the generator left
    # where making the copies left it
    gen = torch.Generator().manual_seed(5)
    build_samples([X], y, 20, 8, perturb=3, gen=gen)  # the same draws for the copies
    drawn = []
    for j in range(1, 4):
        params = draw_stage_params({"k2": 3}, jitter, gen)
        assert 4 <= params["k1"] <= 12 and isinstance(params["k1"], int) and 0.1 <= params["lambda_value"] <= 0.5
        assert params["k2"] == 3
        want = stage_table(sets[j].X, "k_reciprocal", params, 19)
        assert torch.equal(sets[j].table.indices, want.indices) and torch.equal(sets[j].table.scores, want.scores)
        drawn.append(params)
    assert len({(p["k1"], p["lambda_value"]) for p in drawn}) == 3
    assert any(not torch.equal(a.table.scores, b.table.scores) for a, b in zip(sets[1:], plain[1:]))


def test_stage_jitter_without_copies_warns_that_it_draws_nothing():
    X, y = clustered_features(40, 16, 5)
    with pytest.warns(UserWarning, match="stage_jitter: no perturbed or dense copies"):
        train(X, y, stage="k_reciprocal", stage_jitter={"k1": [4, 9]}, **(TRAIN | {"epochs": 1}))


def test_a_model_trained_with_stage_jitter_is_served_at_its_stage_params_and_resumes_only_with_the_same(tmp_path):
    X, y = clustered_features(60, 16, 6)
    path = tmp_path / "j.pt"
    kw = TRAIN | dict(stage="k_reciprocal", stage_params={"k2": 3}, perturb=1, epochs=1)
    train(X, y, stage_jitter={"k1": [4, 12]}, checkpoint=path, **kw)
    assert load_model(path).stage_params == {"k2": 3}
    assert torch.load(path, weights_only=False)["train_config"]["stage_jitter"] == {"k1": [4, 12]}
    with pytest.raises(ValueError, match="stage_jitter"):
        train(X, y, stage_jitter={"k1": [4, 9]}, resume=path, **(kw | {"epochs": 2}))
    train(X, y, stage_jitter={"k1": (4, 12)}, resume=path, **(kw | {"epochs": 2}))


def test_serving_a_stage_model_without_its_table_or_scores_is_refused():
    X, _ = clustered_features(30, 16, 5)
    m = CSA(6, stage="k_reciprocal", stage_depth=10, **SMALL).eval()
    ranks = torch.stack([torch.randperm(30)[:10] for _ in range(3)])
    with pytest.raises(ValueError, match="stage_table"):
        csa_scores(m, X[:3], X, ranks, 8)
    table = stage_table(X, "k_reciprocal", {}, 10)
    with pytest.raises(ValueError, match="input_scores"):
        csa_scores(m, X[:3], X, ranks, 8, stage_table=table)
    plain = CSA(6, **SMALL).eval()
    with pytest.raises(ValueError, match="stage_table"):
        csa_scores(plain, X[:3], X, ranks, 8, stage_table=table)
    with pytest.raises(ValueError, match="without a stage"):
        CSA(6, stage_params={"k1": 3}, **SMALL)
    with pytest.raises(TypeError, match="stage_params"):
        CSA(6, stage="k_reciprocal", stage_params={"k1": [1]}, **SMALL)


def test_resume_refuses_another_stage(tmp_path):
    X, y = clustered_features(60, 16, 6)
    path = tmp_path / "a.pt"
    train(X, y, stage="k_reciprocal", checkpoint=path, **(TRAIN | {"epochs": 1}))
    with pytest.raises(ValueError, match="stage"):
        train(X, y, stage="gnn", resume=path, **(TRAIN | {"epochs": 2}))


def test_cli_trains_over_a_stage_and_eval_serves_it_last(tmp_path, monkeypatch, capsys):
    import numpy as np

    X, y = clustered_features(80, 16, 8)
    data = tmp_path / "f.npz"
    np.savez(data, feats=X.numpy(), labels=y.numpy())
    out = tmp_path / "m.pt"
    argv = ["pycsa", "train", "--features", str(data), "--K", "12,20", "--L", "8", "--dim", "32", "--depth", "1",
            "--heads", "1", "--epochs", "1", "--batch-size", "16", "--optimizer", "adamw", "--loss", "positive",
            "--residual", "--stage", "k_reciprocal", "--stage-params", json.dumps({"k1": 10, "k2": 3}),
            "--perturb", "1", "--stage-jitter", json.dumps({"lambda_value": [0.1, 0.5]}), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    assert pycsa.cli.main() == 0
    assert 'over k_reciprocal {"k1": 10, "k2": 3}, its parameters per copy drawn from {"lambda_value": [0.1, 0.5]}' \
        in capsys.readouterr().out
    assert load_model(out).stage_params == {"k1": 10, "k2": 3}
    monkeypatch.setattr(sys, "argv", ["pycsa", "eval", "--features", str(data), "--checkpoint", str(out),
                                      "--csa-k", "20", "--method", "k_reciprocal+csa"])
    assert pycsa.cli.main() == 0
    assert "k_reciprocal+csa" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", argv[:-2] + ["--stage-params", "[1]", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        pycsa.cli.main()
    assert exc.value.code == 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small model trained over k-reciprocal (k1=10, k2=3), its features and that stage's ranking."""
    X, y = clustered_features(80, 16, 8)
    path = tmp_path_factory.mktemp("stage") / "kr.pt"
    train(X, y, stage="k_reciprocal", stage_params={"k1": 10, "k2": 3}, checkpoint=path, seed=1, **TRAIN)
    s, i = pycsa.search(X, X, 80)
    first = pycsa.create("k_reciprocal", k1=10, k2=3).rerank(X, X, pycsa.Ranking(i, s))
    return X, path, first


def test_serving_is_csa_scores_on_the_stage_table_of_the_model_depth(served):
    """The re-ranker's output is the model's scores on affinities from the stage's table at the
    model's stage_depth, the ranking's scores as input: leave-one-out with each query's own row
    (its row of the table), and as new queries (own -1: their row and column from the scores)."""
    X, path, first = served
    m = load_model(path)
    table = stage_table(X, m.stage, m.stage_params, m.stage_depth)
    assert torch.equal(first.indices[:, 0], torch.arange(80))  # each row's own first (k-reciprocal: distance 0)
    rest = pycsa.Ranking(first.indices[:, 1:], first.scores[:, 1:])
    want = resort_top(rest, csa_scores(m, X, X, rest.indices, 20, input_scores=rest.scores, stage_table=table,
                                       own=torch.arange(80)))
    got = CSAReranker(path, k=20).rerank(X, X, first)
    assert torch.equal(got.indices[:, 1:], want.indices) and torch.allclose(got.scores[:, 1:], want.scores)
    new_q = resort_top(first, csa_scores(m, X, X, first.indices, 20, input_scores=first.scores, stage_table=table))
    as_new = CSAReranker(path, k=20, leave_one_out=False).rerank(X, X, first)
    assert torch.equal(as_new.indices, new_q.indices)
    assert not torch.equal(as_new.indices[:, 1:], got.indices[:, 1:])  # the own row matters


def test_one_reranker_serves_two_databases_of_the_same_shape(served):
    X, path, first = served
    X2, _ = clustered_features(80, 16, 8, seed=5)
    s2, i2 = pycsa.search(X2, X2, 80)
    first2 = pycsa.create("k_reciprocal", k1=10, k2=3).rerank(X2, X2, pycsa.Ranking(i2, s2))
    r = CSAReranker(path, k=20)
    r.rerank(X, X, first)
    assert torch.equal(r.rerank(X2, X2, first2).indices, CSAReranker(path, k=20).rerank(X2, X2, first2).indices)
    assert torch.equal(r.rerank(X, X, first).indices, CSAReranker(path, k=20).rerank(X, X, first).indices)


def test_a_ranking_from_another_stage_or_other_parameters_is_refused(served):
    X, path, first = served
    s, i = pycsa.search(X, X, 80)
    defaults = pycsa.create("k_reciprocal").rerank(X, X, pycsa.Ranking(i, s))  # k1=20, k2=6
    for ranking in (defaults, pycsa.Ranking(i, s)):
        with pytest.raises(ValueError, match="not those of this CSA model's stage, k_reciprocal"):
            CSAReranker(path, k=20).rerank(X, X, ranking)
    with pytest.raises(ValueError, match="bare indices"):
        CSAReranker(path, k=20).rerank(X, X, first.indices)
    with pytest.raises(IndexError, match="own"):
        CSAReranker(path, k=20).rerank(X[:3], X, pycsa.Ranking(first.indices[:3], first.scores[:3]),
                                       own=torch.tensor([0, 1, 80]))


def test_cli_runs_a_stage_model_only_after_its_stage(served, tmp_path, monkeypatch, capsys):
    import numpy as np

    X, path, _ = served
    data = tmp_path / "f.npz"
    np.savez(data, feats=X.numpy(), labels=(torch.arange(80) % 8).numpy())
    for method in ("csa", "gnn+csa"):
        monkeypatch.setattr(sys, "argv", ["pycsa", "eval", "--features", str(data), "--checkpoint", str(path),
                                          "--method", method])
        assert pycsa.cli.main() == 2
        assert "right after that stage" in capsys.readouterr().err


def test_the_k_reciprocal_recipe_shortened_lifts_k_reciprocal_on_unseen_mpeg7_classes(shared_data):
    # The chain's real-data check (issue #18), the recipe of `pycsa train --recipe k_reciprocal` cut to
    # one epoch and two perturbed copies (~50 s of training on 2 AVX2 cores): trained on classes 0-34,
    # served after k-reciprocal at its defaults on classes 35-69. Measured 2026-11-30, k-reciprocal
    # 85.62: seeds 0/1/2 gave 86.08/86.22/86.18 at K=128 and 86.12/86.21/86.19 over the whole list;
    # the full recipe gives 86.12-86.43 (bench/results/2026-11-29-csa-experiments-mpeg7.md, 15-16)
    from pycsa.datasets import load_retrieval_features
    from pycsa.tune import Scorer
    from pycsa.tune_learned import STAGE_RECIPES, fit_recipe

    fs = load_retrieval_features(shared_data / "mpeg7" / "mpeg7_mobilenetv2_imagenet_gap1280.npz")
    train_half, test_half = fs.class_half("first"), fs.class_half("second")
    recipe = fit_recipe(train_half.database.shape[0], dict(STAGE_RECIPES["k_reciprocal+csa"], epochs=1, perturb=2,
                                                           dense=0))
    res = train(train_half.database, train_half.db_labels, seed=0, **recipe)
    X = test_half.database
    s, i = pycsa.search(X, X, X.shape[0])
    stage = pycsa.create("k_reciprocal").fit(X).rerank(X, X, pycsa.Ranking(i, s))
    score = Scorer("classes", test_half)
    base = score(stage)
    for k in (128, X.shape[0] - 1):
        chained = score(CSAReranker(model=res.model, k=k).fit(X).rerank(X, X, stage))
        assert chained > base + 0.25, (k, base, chained)
