"""CSA's options beyond the paper (issue #18): the per-positive loss, the residual model that
corrects the input ranking, standardised affinities, several training K and perturbed copies."""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
import torch

import pycsa
import pycsa.cli
from pycsa.csa import CSA, CSAReranker, build_samples, csa_loss, csa_scores, load_model, save_checkpoint, train
from pycsa.evaluate import class_map
from pycsa.rerank.csa.model import standardized_affinity
from pycsa.rerank.csa.train import make_batch

from _clusters import clustered_features

SMALL = dict(dim=32, depth=1, heads=1, dropout=0.0, drop_path=0.0)


def _features(n=60, d=16, classes=6, seed=0):
    return clustered_features(n, d, classes, seed)


def _residual_model(L=8, gate=0.0, seed=0):
    torch.manual_seed(seed)
    m = CSA(num_anchors=L, residual=True, **SMALL).eval()
    with torch.no_grad():
        m.gate.fill_(gate)
    return m


# ------------------------------------------------------------------ the per-positive loss


def test_positive_loss_matches_the_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    y, rec, A = torch.randn(1, 5, 3, generator=g), torch.randn(1, 5, 4, generator=g), torch.randn(1, 5, 4, generator=g)
    rel = torch.tensor([[True, True, False, True, False]])
    _, l_c, _ = csa_loss(y, rec, A, rel, tau=0.5, lam=0.0, loss="positive")
    cos = np.array([float(torch.nn.functional.cosine_similarity(y[0, 0], y[0, i], dim=0)) for i in range(1, 5)])
    e = np.exp(cos / 0.5)
    pos, neg = e[[0, 2]], e[[1, 3]]
    want = np.mean([-np.log(p / (p + neg.sum())) for p in pos])
    assert abs(float(l_c) - want) < 1e-6


def test_the_mass_loss_is_content_with_one_relevant_item_the_positive_loss_is_not():
    """Why the option exists: one relevant item on top and the others last is a small mass
    loss but a large per-positive one (on MPEG-7 the mass loss let a residual model lose 8
    points of mAP while it fell)."""
    def loss(scores, kind):
        rel = torch.tensor([[True] + [True, True, True] + [False] * 4])
        y = torch.zeros(1, 8, 2)
        return float(csa_loss(y, torch.zeros(1, 8, 1), torch.ones(1, 8, 1), rel, tau=0.1, lam=0.0, loss=kind,
                              scores=scores)[1])

    one_on_top = torch.tensor([[1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0]])  # relevant: items 1-3
    all_on_top = torch.tensor([[1.0, 0.9, 0.8, 0.0, 0.0, 0.0, 0.0]])
    assert loss(one_on_top, "mass") < 0.01  # content: the mass is in item 1
    assert loss(one_on_top, "positive") > 3.0  # two relevant items below four irrelevant ones
    assert loss(all_on_top, "positive") < 0.01


def test_positive_loss_leaves_out_lists_with_no_relevant_or_no_irrelevant_item():
    y, rec, A = torch.randn(3, 4, 3), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    rel = torch.tensor([[True, False, False, False], [True, True, True, True], [True, True, False, False]])
    _, l_c, _ = csa_loss(y, rec, A, rel, loss="positive")
    _, l_c1, _ = csa_loss(y[2:], rec[2:], A[2:], rel[2:], loss="positive")
    assert torch.allclose(l_c, l_c1)
    _, none, _ = csa_loss(y[:2], rec[:2], A[:2], rel[:2], loss="positive")
    assert float(none) == 0.0
    with pytest.raises(ValueError, match="loss: expected one of mass, positive, got 'map'"):
        csa_loss(y, rec, A, rel, loss="map")


# ------------------------------------------------------------------ the residual model


def test_a_residual_model_at_gate_zero_keeps_the_input_order():
    X, _ = _features(n=50)
    s, i = pycsa.search(X[:4], X, 30)
    out = CSAReranker(model=_residual_model(gate=0.0), k=20).rerank(X[:4], X, pycsa.Ranking(i, s))
    assert torch.equal(torch.as_tensor(out.indices), i)


def test_residual_scores_are_standardised_input_plus_gate_times_standardised_csa():
    m = _residual_model(gate=0.7)
    y = torch.randn(2, 6, 32)
    s_in = torch.randn(2, 5)
    z = lambda t: (t - t.mean(1, keepdim=True)) / t.std(1, unbiased=False, keepdim=True)  # noqa: E731
    want = z(s_in) + 0.7 * z(CSA.scores(y)[:, 1:])
    assert torch.allclose(m.rescore(y, s_in), want, atol=1e-5)
    # a constant list (all scores equal) stays finite, and so do the gradients through it (the
    # spread's square root at 0 once made them NaN, which spread into every weight)
    y_const = torch.ones(1, 4, 32, requires_grad=True)
    s_const = torch.ones(1, 3, requires_grad=True)
    out = m.rescore(y_const, s_const)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(y_const.grad).all() and torch.isfinite(s_const.grad).all()
    A = torch.ones(2, 6, 4, requires_grad=True)
    standardized_affinity(A, 4).sum().backward()
    assert torch.isfinite(A.grad).all()


def test_residual_serving_needs_the_rankings_scores():
    X, _ = _features(n=50)
    s, i = pycsa.search(X[:2], X, 20)
    r = CSAReranker(model=_residual_model(), k=10)
    with pytest.raises(ValueError, match="ranking: this CSA model is residual"):
        r.rerank(X[:2], X, i)
    with pytest.raises(ValueError, match="input_scores: a residual CSA model"):
        r.model.rescore(torch.randn(1, 4, 32))
    bad = s.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="ranking.scores: contains NaN"):
        r.rerank(X[:2], X, pycsa.Ranking(i, bad))
    with pytest.raises(ValueError, match="input_scores: the ranking's scores of the re-scored candidates must be finite"):
        csa_scores(r.model, X[:2], X, i, 10, input_scores=bad)
    with pytest.raises(ValueError, match=r"input_scores: expected the ranking's shape \(2, 20\)"):
        csa_scores(r.model, X[:2], X, i, 10, input_scores=s[:, :5])


def test_residual_checkpoint_round_trip_and_old_checkpoints_load(tmp_path):
    m = _residual_model(gate=1.25)
    path = tmp_path / "res.pt"
    save_checkpoint(path, m)
    back = load_model(path)
    assert back.residual and not back.standardize and float(back.gate.detach()) == 1.25
    # a checkpoint written before these options existed has neither key: both off
    payload = torch.load(path, weights_only=False)
    plain = CSA(num_anchors=8, **SMALL)
    payload["model_config"] = {k: v for k, v in plain.config.items() if k not in ("residual", "standardize")}
    payload["state_dict"] = plain.state_dict()
    torch.save(payload, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert not old.residual and not old.standardize and old.gate is None
    with pytest.raises(TypeError, match="residual: must be True or False"):
        CSA(num_anchors=8, residual=1, **SMALL)


# ------------------------------------------------------------------ standardised affinities


def test_standardised_affinity_uses_the_anchor_rows_so_any_K_scales_alike():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 20, 6, generator=g) * 3 + 5
    out = standardized_affinity(A, 6)
    top = out[:, :6]
    assert torch.allclose(top.mean((1, 2)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(top.pow(2).mean((1, 2)), torch.ones(2), atol=1e-4)
    # the first 10 rows of a list scale as they do inside the whole list
    assert torch.allclose(standardized_affinity(A[:, :10], 6), out[:, :10], atol=1e-6)
    # padding (NaN here) past a list's length takes no part
    padded = A.clone()
    padded[1, 4:] = float("nan")
    got = standardized_affinity(padded, 6, torch.tensor([20, 4]))
    assert torch.allclose(got[1, :4], standardized_affinity(A[1:, :4], 6)[0], atol=1e-5)


def test_a_standardised_model_is_blind_to_the_affinity_scale():
    torch.manual_seed(0)
    m = CSA(num_anchors=8, standardize=True, **SMALL).eval()
    A = torch.rand(3, 12, 8)
    assert torch.allclose(m(A), m(4.0 * A - 1.0), atol=1e-4)


# ------------------------------------------------------------------ training with the options


def test_training_K_list_draws_each_length_and_perturbed_copies_add_samples(monkeypatch):
    X, y = _features(n=40)
    sets = build_samples([X], y, K=12, L=8, perturb=2, gen=torch.Generator().manual_seed(0))
    assert len(sets) == 3 and [s.X.shape[0] for s in sets] == [40, 32, 32]
    assert not torch.equal(sets[1].X, X[:32])  # perturbed: other rows, dimensions zeroed
    # a sample id past the first set's 40 rows is row id - 40 of the second set
    A, rel, _ = make_batch(sets, torch.tensor([0, 40, 72]), 12, 8, torch.Generator().manual_seed(0))
    for b, (sset, img) in enumerate(((sets[0], 0), (sets[1], 0), (sets[2], 0))):
        assert torch.allclose(A[b, 0, 0], sset.X[img] @ sset.X[img])
    seen = []
    orig = make_batch

    def spy(sets_, ids, K, L, gen):
        seen.append(K)
        return orig(sets_, ids, K, L, gen)

    # the module, not pycsa.rerank.csa.train (the package's name for the function)
    monkeypatch.setattr(sys.modules["pycsa.rerank.csa.train"], "make_batch", spy)
    res = train(X, y, K=[9, 12], L=8, epochs=2, batch_size=8, lr=1e-3, optimizer="adamw", loss="positive",
                residual=True, perturb=1, **SMALL)
    monkeypatch.undo()
    assert set(seen) == {9, 12}
    assert len(res.history) == 2 and all(np.isfinite(h["loss"]) for h in res.history)
    assert res.model.residual and float(res.model.gate.detach()) != 0.0  # the gate learned
    for bad, match in (([], "K: an empty list"), ([8, 1], "K: "),):
        with pytest.raises(ValueError, match=match):
            train(X, y, K=bad, L=8, epochs=1, **SMALL)
    with pytest.raises(ValueError, match="loss: expected one of mass, positive"):
        train(X, y, K=8, L=8, epochs=1, loss="ap", **SMALL)
    with pytest.raises(ValueError, match="perturb"):
        train(X, y, K=8, L=8, epochs=1, perturb=-1, **SMALL)


def test_resume_keeps_the_residual_option(tmp_path):
    X, y = _features(n=40)
    path = tmp_path / "r.pt"
    train(X, y, K=8, L=8, epochs=1, batch_size=8, residual=True, checkpoint=path, **SMALL)
    with pytest.raises(ValueError, match="resume: .* was trained with residual=True, this run asks for residual=False"):
        train(X, y, K=8, L=8, epochs=2, batch_size=8, resume=path, **SMALL)


def test_mpeg7_residual_recipe_improves_on_cosine_and_keeps_order_where_it_learned_nothing(shared_data):
    """Trained on MPEG-7 classes 0-34 with the recipe of bench/csa_mpeg7_residual.sh (shortened),
    the residual model improves classes 35-69 at K=128 and at K=512."""
    d = np.load(shared_data / "mpeg7" / "mpeg7_mobilenetv2_imagenet_gap1280.npz")
    F, y = d["feats"].astype(np.float32), d["labels"]
    first = np.isin(y, np.unique(y)[:35])
    Xtr, ytr, Xte, yte = F[first], y[first], F[~first], y[~first]
    res = train(Xtr, ytr, K=[128, 256], L=128, dim=64, depth=2, heads=1, dropout=0.0, drop_path=0.0, epochs=1,
                batch_size=16, optimizer="adamw", lr=3e-4, warmup_epochs=0, tau=1.0, lam=0.0, loss="positive",
                residual=True)
    s, i = pycsa.search(Xte, Xte, Xte.shape[0])
    cos = class_map(i, yte, yte, exclude_self=True)
    for k in (128, 512):
        new = CSAReranker(model=res.model, k=k).rerank(Xte, Xte, pycsa.Ranking(i, s))
        got = class_map(new.indices, yte, yte, exclude_self=True)
        assert got > cos + 0.02, (k, cos, got)


def test_cli_train_with_the_options(tmp_path, shared_data, capsys):
    m = str(shared_data / "mpeg7" / "mpeg7_mobilenetv2_imagenet_gap1280.npz")
    out = tmp_path / "c.pt"
    rc = pycsa.cli.main(["train", "--features", m, "--class-split", "first", "--K", "64,96", "--L", "64",
                         "--dim", "32", "--heads", "1", "--depth", "1", "--epochs", "1", "--batch-size", "32",
                         "--optimizer", "adamw", "--loss", "positive", "--residual", "--perturb", "1",
                         "--dense", "1", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "residual" in text and "K=64,96, 1 perturbed, 1 dense copies" in text and "loss positive" in text
    model = load_model(out)
    assert model.residual
    assert torch.load(out, weights_only=False)["train_config"]["dense"] == 1
    with pytest.raises(SystemExit) as exit_:
        pycsa.cli.main(["train", "--features", m, "--K", "64,,96", "--out", str(tmp_path / "x.pt")])
    assert exit_.value.code == 2
    assert "--K: expected positive integers separated by commas" in capsys.readouterr().err
    for flag in (["--residual"], ["--dense", "1"]):
        assert pycsa.cli.main(["train", "--method", "rrt", "--features", m, *flag,
                               "--out", str(tmp_path / "y.pt")]) == 2
        assert f"{flag[0]}: a CSA option; RRT does not use it" in capsys.readouterr().err


# ------------------------------------------------------------------ review fixes


def test_training_keeps_the_anchor_rows_first_so_standardising_sees_the_same_rows_as_serving():
    X, y = _features(n=60)
    sets = build_samples([X], y, K=20, L=6)
    ids = torch.arange(5)
    A, _, _ = make_batch(sets, ids, 20, 6, torch.Generator().manual_seed(1))
    plain = pycsa.ops.affinity(X, sets[0].ranks[ids], 6, queries=X[ids])[:, :20]
    for b in range(5):  # rows 2..L are the anchors' rows (permuted among themselves), then the rest
        assert torch.equal(A[b, 0], plain[b, 0])
        assert torch.equal(torch.sort(A[b, 1:6, 0]).values, torch.sort(plain[b, 1:6, 0]).values)
        assert torch.equal(torch.sort(A[b, 6:, 0]).values, torch.sort(plain[b, 6:, 0]).values)
    assert not torch.equal(A, plain)  # still permuted


def test_leave_one_out_keeps_the_own_row_first_and_reranks_the_others_without_it():
    X, _ = _features(n=50)
    s, i = pycsa.search(X, X, 30)
    model = _residual_model(gate=0.8)
    r = CSAReranker(model=model, k=12)
    got = r.rerank(X, X, pycsa.Ranking(i, s))  # detected: the queries are the database
    assert torch.equal(torch.as_tensor(got.indices)[:, 0], torch.arange(50))
    # the same as re-ranking the lists with the own row removed
    rest = pycsa.Ranking(i[:, 1:], s[:, 1:])
    want = CSAReranker(model=model, k=12, leave_one_out=False).rerank(X + 0, X, rest)
    assert torch.equal(torch.as_tensor(got.indices)[:, 1:], torch.as_tensor(want.indices))
    # some of the rows as queries, their own rows named
    sub = r.rerank(X[[4, 9]], X, pycsa.Ranking(i[[4, 9]], s[[4, 9]]), own=[4, 9])
    assert torch.equal(torch.as_tensor(sub.indices), torch.as_tensor(got.indices)[[4, 9]])
    with pytest.raises(ValueError, match="own: expected one integer database row per query"):
        r.rerank(X[[4, 9]], X, pycsa.Ranking(i[[4, 9]], s[[4, 9]]), own=[[4, 9]])
    with pytest.raises(ValueError, match="own: 1 rows for 2 queries"):
        r.rerank(X[[4, 9]], X, pycsa.Ranking(i[[4, 9]], s[[4, 9]]), own=[4])


def test_resume_refuses_other_training_options(tmp_path):
    X, y = _features(n=40)
    path = tmp_path / "r.pt"
    train(X, y, K=[8, 10], L=8, epochs=1, batch_size=8, loss="positive", checkpoint=path, **SMALL)
    for change, match in ((dict(loss="mass", K=[8, 10]), "loss=positive, this run asks for loss=mass"),
                          (dict(loss="positive", K=[8, 10], perturb=1), "perturb=0, this run asks for perturb=1"),
                          (dict(loss="positive", K=[8, 10], dense=1), "dense=0, this run asks for dense=1"),
                          (dict(loss="positive", K=8), r"K=\[8, 10\], this run asks for K=8")):
        with pytest.raises(ValueError, match=match):
            train(X, y, L=8, epochs=2, batch_size=8, resume=path, **change, **SMALL)
    assert len(train(X, y, K=[8, 10], L=8, epochs=2, batch_size=8, loss="positive", resume=path,
                     **SMALL).history) == 2


def test_dense_views_grow_a_quarter_of_the_classes_fourfold_on_their_segments(monkeypatch):
    from pycsa.rerank.csa.train import DENSE_GROWTH, dense_view

    # 12 classes of 2 items, each item a basis vector: a point between two of a class's items
    # has weight on those two dimensions only, both non-negative
    X = torch.eye(26)
    y = torch.arange(26) // 2
    y[-2:] = -1  # distractors: in no dense class
    gen = torch.Generator().manual_seed(0)
    Xd, yd = dense_view(X, y, min_size=4, gen=gen)
    assert DENSE_GROWTH == 4
    classes = torch.unique(yd)
    assert classes.numel() == 3 and (classes >= 0).all()  # 12 // 4 classes
    assert Xd.shape == (3 * 2 * DENSE_GROWTH, 26)
    between = 0
    for c in classes.tolist():
        rows = Xd[yd == c]
        own = torch.zeros(26, dtype=torch.bool)
        own[2 * c:2 * c + 2] = True
        assert torch.equal(rows[:2], X[2 * c:2 * c + 2])  # the class's own items first
        assert torch.all(rows[:, ~own] == 0) and torch.all(rows[:, own] >= 0)
        assert torch.allclose(rows.norm(dim=1), torch.ones(rows.shape[0]))
        between += int(((rows[2:, own] > 0.05).all(dim=1)).sum())
    assert between >= 8  # most new points mix two items (a or b alone would be the item itself)
    # the mixed norm of the two items, not 1: unnormalised features keep their scale
    Xs, _ = dense_view(X * 10, y, min_size=4, gen=torch.Generator().manual_seed(0))
    assert torch.allclose(Xs.norm(dim=1), torch.full((Xs.shape[0],), 10.0))
    # classes are added until the lists fit; none when even all of them cannot
    Xd, yd = dense_view(X, y, min_size=30, gen=gen)
    assert Xd.shape[0] >= 30 and torch.unique(yd).numel() == 4
    assert dense_view(X, y, min_size=100, gen=gen) is None
    # in training: one more sample set per dense copy, and the option is checked and kept
    X, y = _features(n=40)
    sets = build_samples([X], y, K=12, L=8, perturb=1, dense=2, gen=torch.Generator().manual_seed(0))
    assert len(sets) == 4 and all(s.X.shape[0] >= 12 for s in sets[2:])
    mostly_distractors = torch.where(torch.arange(40) < 8, y, torch.full_like(y, -1))
    with pytest.warns(UserWarning, match="dense: the labelled items, grown fourfold, cannot fill lists of 39"):
        sets = build_samples([X], mostly_distractors, K=39, L=8, dense=2, gen=torch.Generator().manual_seed(0))
    assert len(sets) == 1
    with pytest.raises(ValueError, match="dense"):
        train(X, y, K=8, L=8, epochs=1, dense=-1, **SMALL)
    seen = []
    orig = build_samples

    def spy(*args, **kw):
        seen.append(kw.get("dense"))
        return orig(*args, **kw)

    # the module, not pycsa.rerank.csa.train (the package's name for the function)
    monkeypatch.setattr(sys.modules["pycsa.rerank.csa.train"], "build_samples", spy)
    res = train(X, y, K=8, L=8, epochs=1, batch_size=8, dense=1, **SMALL)
    monkeypatch.undo()
    assert seen == [1] and res.history and np.isfinite(res.history[0]["loss"])


def test_cli_train_recipe_sets_the_measured_options_and_given_flags_win(tmp_path, capsys):
    from pycsa.tune_learned import CSA_RECIPE, STAGE_RECIPES

    X, y = _features(n=60)
    feats = tmp_path / "t.npz"
    np.savez(feats, feats=X.numpy(), labels=y.numpy())
    out = tmp_path / "r.pt"
    assert pycsa.cli.main(["train", "--features", str(feats), "--recipe", "residual", "--epochs", "1",
                           "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recipe residual" in text and "--K: 59 (the recipe's [128, 256, 512] fitted" in text
    payload = torch.load(out, weights_only=False)
    model, used = load_model(out), payload["train_config"]
    assert model.residual and model.standardize and model.stage is None
    c = model.config
    assert (c["num_anchors"], c["dim"], c["depth"], c["heads"]) == (59, CSA_RECIPE["dim"], CSA_RECIPE["depth"],
                                                                    CSA_RECIPE["heads"])
    assert used["epochs"] == 1  # the flag, not the recipe's 3
    # given list lengths are kept, not fitted
    assert pycsa.cli.main(["train", "--features", str(feats), "--recipe", "residual", "--epochs", "1", "--K", "20",
                           "--L", "10", "--out", str(tmp_path / "k.pt")]) == 0
    assert "fitted" not in capsys.readouterr().out
    assert torch.load(tmp_path / "k.pt", weights_only=False)["train_config"]["K"] == 20
    assert load_model(tmp_path / "k.pt").num_anchors == 10
    for key in ("perturb", "dense", "loss", "optimizer", "lr", "tau", "lam", "batch_size", "warmup_epochs"):
        assert used[key] == CSA_RECIPE[key], key
    # what the recipe turns on, a flag beside it turns off
    assert pycsa.cli.main(["train", "--features", str(feats), "--recipe", "residual", "--epochs", "1",
                           "--no-standardize", "--out", str(tmp_path / "n.pt")]) == 0
    capsys.readouterr()
    assert load_model(tmp_path / "n.pt").residual and not load_model(tmp_path / "n.pt").standardize
    assert pycsa.cli.main(["train", "--features", str(feats), "--recipe", "k_reciprocal", "--epochs", "1",
                           "--out", str(out)]) == 0
    capsys.readouterr()
    assert load_model(out).stage == STAGE_RECIPES["k_reciprocal+csa"]["stage"]
    config = torch.load(out, weights_only=False)["train_config"]
    assert config["perturb"] == STAGE_RECIPES["k_reciprocal+csa"]["perturb"]
    assert config["stage_jitter"] == {k: list(b) for k, b in STAGE_RECIPES["k_reciprocal+csa"]["stage_jitter"].items()}
    # every option of a recipe is one of train's (argparse would drop an unknown default silently)
    from pycsa.cli.train import recipe_defaults

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    pycsa.cli.train.add_parser(sub)
    args = parser.parse_args(["train", "--features", "f", "--out", "o", "--recipe", "k_reciprocal"])
    assert set(recipe_defaults(args)) <= set(vars(args))
    assert pycsa.cli.main(["train", "--method", "rrt", "--features", str(feats), "--recipe", "residual",
                           "--out", str(tmp_path / "y.pt")]) == 2
    assert "--recipe: a CSA option; RRT does not use it" in capsys.readouterr().err
