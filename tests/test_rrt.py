"""RRT: local-descriptor store, model (packing, lengths), training, serving."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pycsa
from pycsa.datasets.local import LocalDescriptors, load_local_descriptors, make_local_descriptors
from pycsa.rrt import RRT, RRTReranker, pair_logits, train
from pycsa.rerank.checkpoint import save_checkpoint
from pycsa.rerank.rrt.train import FORMAT


def _store(counts=(3, 0, 5, 1), dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = sum(counts)
    return LocalDescriptors(torch.randn(M, dim, generator=g), torch.tensor([0, *np.cumsum(counts)]),
                            torch.randint(0, 2, (M,), generator=g))


# ------------------------------------------------------------------ the store


def test_store_padded_and_subset():
    s = _store()
    desc, sc, n = s.padded(torch.tensor([2, 1, 0]))
    assert desc.shape == (3, 5, 8) and n.tolist() == [5, 0, 3]
    assert torch.equal(desc[0], s.descriptors[3:8]) and torch.all(desc[1] == 0)
    assert torch.equal(desc[2, :3], s.descriptors[:3]) and torch.all(desc[2, 3:] == 0)
    desc, _, n = s.padded(torch.tensor([2]), max_count=2)
    assert desc.shape == (1, 2, 8) and n.tolist() == [2]
    sub = s.subset([2, 0])
    assert sub.counts.tolist() == [5, 3] and torch.equal(sub.descriptors[:5], s.descriptors[3:8])


def test_padded_descriptors_stay_on_the_stores_device():
    # the serving path moves the store to the model's device (meta stands in for CUDA here)
    desc, sc, n = _store().to("meta").padded(torch.tensor([2, 1, 0]), max_count=4)
    assert desc.device.type == "meta" and desc.shape == (3, 4, 8)
    assert sc.device.type == "cpu" and n.tolist() == [4, 0, 3]


@pytest.mark.parametrize("bad, match", [
    (dict(offsets=torch.tensor([0, 3, 2, 9])), "non-decreasing"),
    (dict(offsets=torch.tensor([0, 3, 8])), "last offset is 8 but there are 9"),
    (dict(offsets=torch.tensor([1, 9])), "starting at 0"),
    (dict(scales=torch.zeros(4, dtype=torch.long)), "one scale index per descriptor"),
    (dict(descriptors=torch.full((9, 8), float("nan"))), "NaN"),
])
def test_store_refuses_inconsistent_input(bad, match):
    s = _store()
    args = dict(descriptors=s.descriptors, offsets=s.offsets, scales=s.scales)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        LocalDescriptors(**args)


def test_load_the_mpeg7_local_descriptors(shared_data):
    s = load_local_descriptors(shared_data / "mpeg7" / "mpeg7_mobilenetv2_local128.npz")
    assert s.num_images == 1400 and s.dim == 128 and s.num_scales == 2
    assert torch.all(s.counts == 75)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_local_descriptors(tmp_path / "nope.npz")
    np.savez(tmp_path / "x.npz", local=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="needs local or descriptors or local_descriptors and 'offsets'"):
        load_local_descriptors(tmp_path / "x.npz")


def test_synthetic_local_descriptors_vary_in_count_and_share_parts_within_a_class():
    labels = np.repeat(np.arange(4), 5)
    s = make_local_descriptors(labels, min_count=10, max_count=40, seed=1)
    assert s.num_images == 20 and int(s.counts.min()) >= 10 and int(s.counts.max()) <= 40
    assert s.counts.unique().numel() > 3  # ragged

    def matches(i, j):
        a = s.descriptors[s.offsets[i]:s.offsets[i + 1]]
        b = s.descriptors[s.offsets[j]:s.offsets[j + 1]]
        return int(((a @ b.T) > 0.8).sum())

    same = np.mean([matches(0, j) for j in range(1, 5)])
    other = np.mean([matches(0, j) for j in range(5, 20)])
    assert same > 5 * max(other, 0.2)


# ------------------------------------------------------------------ the model


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(global_dim=6, dim=8, depth=2, heads=2, ffn=16, num_scales=2, dropout=0.0)
    cfg.update(kw)
    return RRT(**cfg).eval()


def test_padding_changes_nothing():
    """A pair computed alone equals the same pair in a batch padded for a longer one."""
    m, s, G = _model(), _store(counts=(3, 7, 2, 6)), torch.randn(4, 6)
    with torch.no_grad():
        both = pair_logits(m, G, s, torch.tensor([0, 1]), torch.tensor([2, 3]))
        alone = pair_logits(m, G, s, torch.tensor([0]), torch.tensor([2]))
    assert both.shape == (2,) and torch.allclose(both[0], alone[0], atol=1e-5)


def test_local_order_does_not_matter_but_content_does():
    m, s, G = _model(), _store(counts=(4, 5)), torch.randn(2, 6)
    with torch.no_grad():
        ref = pair_logits(m, G, s, torch.tensor([0]), torch.tensor([1]))
        perm = torch.tensor([3, 1, 0, 2, 4, 5, 6, 7, 8])
        s2 = LocalDescriptors(s.descriptors[perm], s.offsets, s.scales[perm])
        assert torch.allclose(pair_logits(m, G, s2, torch.tensor([0]), torch.tensor([1])), ref, atol=1e-5)
        s3 = LocalDescriptors(s.descriptors + 1, s.offsets, s.scales)
        assert not torch.allclose(pair_logits(m, G, s3, torch.tensor([0]), torch.tensor([1])), ref, atol=1e-5)


def test_images_without_locals_and_model_errors():
    m, s, G = _model(), _store(), torch.randn(4, 6)
    with torch.no_grad():
        out = pair_logits(m, G, s, torch.tensor([1, 1]), torch.tensor([1, 0]))  # image 1 has none
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="local descriptors: expected dimension 8"):
        pair_logits(m, G, _store(dim=5), torch.tensor([0]), torch.tensor([2]))
    big = LocalDescriptors(s.descriptors, s.offsets, s.scales + 5)
    with pytest.raises(ValueError, match="scales: index 6 but the model has 2 scales"):
        pair_logits(m, G, big, torch.tensor([0]), torch.tensor([2]))


def test_defaults_are_the_papers():
    assert RRT().config == dict(global_dim=2048, dim=128, depth=6, heads=4, ffn=1024, num_scales=7, dropout=0.1,
                               global_skip=None)


@pytest.mark.parametrize("heads", [1, 4])
def test_matching_init_makes_first_layer_logits_beta_times_the_dot_product(heads):
    m = RRT(global_dim=8, dim=16, depth=2, heads=heads, ffn=8).init_matching(5.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 16, generator=g).unbind(0)
    qkv = m.layers[0].qkv
    q, k = qkv(x)[:16].view(heads, -1), qkv(y)[16:32].view(heads, -1)
    dh = 16 // heads
    logits = (q * k).sum(-1) / dh ** 0.5  # what the attention op computes per head
    assert torch.allclose(logits, 5.0 * (x * y).view(heads, -1).sum(-1), atol=1e-5)


def test_augmentation_keeps_dot_products_within_a_pair_and_changes_the_values():
    from pycsa.rerank.rrt.train import _permute, _signed_permutations

    g = torch.Generator().manual_seed(1)
    lq, ld = torch.randn(3, 5, 8, generator=g), torch.randn(3, 7, 8, generator=g)
    perm, sign = _signed_permutations(3, 8, g)
    pq, pd = _permute(lq, perm, sign), _permute(ld, perm, sign)
    assert torch.allclose(pq @ pd.transpose(1, 2), lq @ ld.transpose(1, 2), atol=1e-5)
    assert torch.allclose(pq @ pq.transpose(1, 2), lq @ lq.transpose(1, 2), atol=1e-5)
    assert not torch.allclose(pq, lq)
    gl = torch.randn(3, 8, generator=g)
    assert torch.allclose((_permute(gl, perm, sign) * pq[:, 0]).sum(-1), (gl * lq[:, 0]).sum(-1), atol=1e-5)


# ------------------------------------------------------------------ training and serving


@pytest.fixture(scope="module")
def synthetic():
    """Classes with shared local parts: the global features alone are weak."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 8)
    centres = rng.standard_normal((12, 16))
    G = centres[labels] + 1.5 * rng.standard_normal((labels.size, 16))
    G = (G / np.linalg.norm(G, axis=1, keepdims=True)).astype(np.float32)
    local = make_local_descriptors(labels, dim=16, min_count=6, max_count=30, shared=0.6, seed=2)
    return G, local, labels


def test_training_writes_checkpoints_and_serving_uses_the_pair_logits(synthetic, tmp_path):
    # Mechanics only; that RRT beats the global ranking: test_cli (demo) and bench/rrt_mpeg7.sh.
    G, local, labels = synthetic
    path = tmp_path / "rrt.pt"
    res = train(G, local, labels, topk=20, dim=16, depth=2, heads=2, ffn=32, epochs=2, batch_size=16, lr=3e-3,
                dropout=0.0, checkpoint=path, val=(G, local, labels))
    assert len(res.history) == 2 and all(np.isfinite(h["loss"]) for h in res.history)
    assert all(0 <= h["val_map"] <= 1 for h in res.history)
    r = RRTReranker.load(path, locals=local, top=20)
    G = torch.as_tensor(G)
    s, i = pycsa.search(G, G, 40)
    new = r.rerank(G, G, pycsa.Ranking(i, s))
    assert torch.equal(new.indices[:, 20:], i[:, 20:])
    assert torch.equal(torch.sort(new.indices[:, :20], 1).values, torch.sort(i[:, :20], 1).values)
    with torch.no_grad():
        want = pair_logits(res.model, G, local, torch.zeros(20, dtype=torch.long), i[0, :20])
    assert torch.allclose(torch.sort(new.scores[0, :20], descending=True).values,
                          torch.sort(want, descending=True).values, atol=1e-5)


def test_serving_on_each_device_gives_the_cpu_scores(synthetic, device):
    G, local, labels = synthetic
    torch.manual_seed(0)
    model = RRT(global_dim=16, dim=16, depth=2, heads=2, ffn=32, num_scales=local.num_scales, dropout=0.0).eval()
    G = torch.as_tensor(G)
    s, i = pycsa.search(G, G, 30)
    ranking = pycsa.Ranking(i, s)
    want = RRTReranker(model=model, locals=local, top=20).rerank(G, G, ranking)
    got = RRTReranker(model=model, locals=local, top=20, dtype=torch.float32, batch_pairs=64).rerank(
        G.to(device), G.to(device), pycsa.Ranking(i.to(device), s.to(device)))
    torch.testing.assert_close(got.scores.cpu(), want.scores, rtol=0, atol=1e-4)


def test_reranker_errors(tmp_path):
    with pytest.raises(ValueError, match="checkpoint: RRT needs a trained model"):
        pycsa.create("rrt")
    m = _model()
    path = tmp_path / "m.pt"
    save_checkpoint(path, m, fmt=FORMAT)
    G, s = torch.randn(4, 6), _store()
    Q = torch.randn(2, 6)
    i = torch.tensor([[0, 1], [2, 3]])
    ranking = pycsa.Ranking(i, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="locals: RRT needs the database's local descriptors"):
        RRTReranker.load(path).rerank(Q, G, ranking)
    with pytest.raises(ValueError, match="query_locals: the queries are not the database rows"):
        RRTReranker.load(path, locals=s).rerank(Q, G, ranking)
    with pytest.raises(ValueError, match="locals: has 4 images but the database has 5 rows"):
        RRTReranker.load(path, locals=s).rerank(Q, torch.randn(5, 6), ranking)
    out = RRTReranker.load(path, locals=s, query_locals=_store(counts=(2, 4), seed=3)).rerank(Q, G, ranking)
    assert out.indices.shape == (2, 2)
    csa_ckpt = tmp_path / "csa.pt"
    pycsa.csa.save_checkpoint(csa_ckpt, pycsa.csa.CSA(num_anchors=4, dim=8, heads=1))
    with pytest.raises(ValueError, match="is not a pycsa RRT checkpoint"):
        RRTReranker.load(csa_ckpt)


def test_cli_train_and_eval_rrt(shared_data, tmp_path, capsys):
    import pycsa.cli

    M = str(shared_data / "mpeg7" / "mpeg7_mobilenetv2_imagenet_gap1280.npz")
    Lc = str(shared_data / "mpeg7" / "mpeg7_mobilenetv2_local128.npz")
    out = tmp_path / "rrt.pt"
    assert pycsa.cli.main(["train", "--method", "rrt", "--features", M, "--locals", Lc, "--class-split", "first",
                           "--val-class-split", "second", "--depth", "1", "--ffn", "64", "--epochs", "1",
                           "--topk", "5", "--max-local", "10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "epoch   1" in text and "val mAP" in text and out.exists()
    assert pycsa.cli.main(["eval", "--features", M, "--method", "rrt", "--checkpoint", f"rrt={out}",
                           "--locals", Lc, "--rrt-top", "5", "--class-split", "second"]) == 0
    assert "rrt" in capsys.readouterr().out
    assert pycsa.cli.main(["eval", "--features", M, "--method", "rrt", "--checkpoint", f"rrt={out}"]) == 2
    assert "--locals: rrt needs" in capsys.readouterr().err


def test_trained_on_half_the_mpeg7_classes_it_beats_the_global_ranking_on_the_other_half(shared_data):
    # The real-data check at half the budget of bench/rrt_mpeg7.sh (which runs the full one:
    # 16 triplets per anchor, cosine 74.49 -> RRT 76.20, +1.7 mAP; 882-989 s here on 2 AVX2 cores):
    # 75 local descriptors per image, trained on classes 0-34, every image of classes 35-69 a query
    # with its global top-100 re-ranked. Measured 2026-11-30 with 8 triplets: +0.66; with 4: +0.31,
    # and +0.00 at lr 1.5e-3 or 2 epochs, so the assertion below still fails if training breaks.
    from pycsa.datasets.features import load_retrieval_features
    from pycsa.rerank.rrt.train import rerank_scores
    from pycsa.rerank.validation import resorted_class_map
    from pycsa.search import neighbours_without_self

    fs = load_retrieval_features(shared_data / "mpeg7" / "mpeg7_mobilenetv2_imagenet_gap1280.npz")
    local = load_local_descriptors(shared_data / "mpeg7" / "mpeg7_mobilenetv2_local128.npz")
    train_rows, test_rows = fs.class_half_rows("first"), fs.class_half_rows("second")
    res = train(fs.database[train_rows], local.subset(train_rows), fs.db_labels[train_rows], depth=2, heads=1,
                ffn=256, lr=5e-4, epochs=4, triplets_per_anchor=8, seed=0)
    G = torch.as_tensor(fs.database[test_rows], dtype=torch.float32)
    y = fs.db_labels[test_rows]
    full = neighbours_without_self(G, G.shape[0] - 1)
    cosine = resorted_class_map(full, torch.gather(G @ G.T, 1, full[:, :100]), y)
    rrt = resorted_class_map(full, rerank_scores(res.model, G, local.subset(test_rows), full[:, :100]), y)
    assert rrt > cosine + 0.004, (rrt, cosine)
