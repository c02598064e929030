"""Damaged, hostile or absurd files and sizes are refused by name, before any work: checkpoints
(CRC, keys, configuration, weights), array files whose headers claim more than they hold,
and evaluation inputs that would allocate without bound or index outside the database."""
from __future__ import annotations

import io
import re
import struct
import zipfile

import numpy as np
import pytest
import torch

import pycsa
from pycsa.csa import CSA, CSAReranker, load_model, save_checkpoint
from pycsa.datasets import load_features, load_gnd, load_local_descriptors, load_retrieval_features
from pycsa.evaluate import bullseye, class_map, reid, revisited
from pycsa.rerank.checkpoint import save_checkpoint as save_any
from pycsa.rrt import RRT, RRTReranker, load_rrt

# --------------------------------------------------------------------------- checkpoints


def _csa(path):
    save_checkpoint(path, CSA(num_anchors=8, dim=16, depth=1, heads=2))
    return load_model


def _rrt(path):
    save_any(path, RRT(global_dim=8, dim=16, depth=1, heads=2, ffn=32, global_skip=0.5), fmt="pycsa.rrt")
    return load_rrt


@pytest.fixture(params=[_csa, _rrt], ids=["csa", "rrt"])
def saved(request, tmp_path):
    """A checkpoint written by the real save function, and the function that loads it."""
    path = tmp_path / "model.pt"
    return path, request.param(path)


def _rewrite(path, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def test_intact_checkpoints_still_load(saved):
    path, load = saved
    assert isinstance(load(path), (CSA, RRT))


def test_a_flipped_byte_fails_the_crc_check(saved):
    path, load = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"checkpoint: {path} is damaged"):
        load(path)


def test_nan_weights_are_refused(saved):
    path, load = saved
    _rewrite(path, lambda p: next(t for t in p["state_dict"].values() if t.numel() > 1).view(-1).__setitem__(1, np.nan))
    with pytest.raises(ValueError, match=f"checkpoint: {path}: state_dict.*NaN or inf"):
        load(path)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("change, match", [
    (lambda t: t.to_sparse(), "is a sparse_coo tensor"),
    (lambda t: t.to_sparse_csr(), "is a sparse_csr tensor"),
    (lambda t: t.to(torch.float8_e4m3fn), "has dtype torch.float8_e4m3fn"),
    (lambda t: t.to(torch.complex64), "has dtype torch.complex64"),
    (lambda t: t.to(torch.int32), "has dtype torch.int32"),
])
def test_weights_of_another_layout_or_dtype_are_refused(saved, change, match):
    path, load = saved
    name = next(k for k, t in torch.load(path, weights_only=True)["state_dict"].items() if t.dim() == 2)
    _rewrite(path, lambda p: p["state_dict"].__setitem__(name, change(p["state_dict"][name])))
    with pytest.raises(ValueError, match=f"^checkpoint: {path}: state_dict\\['{re.escape(name)}'\\] {match}"):
        load(path)


def test_half_precision_weights_still_load(saved):
    path, load = saved
    _rewrite(path, lambda p: p.__setitem__("state_dict", {k: t.half() for k, t in p["state_dict"].items()}))
    assert isinstance(load(path), (CSA, RRT))


@pytest.mark.parametrize("key", ["model_config", "state_dict", "format"])
def test_missing_keys_are_named(saved, key):
    path, load = saved
    _rewrite(path, lambda p: p.pop(key))
    with pytest.raises(ValueError, match=str(path)) as info:
        load(path)
    assert key in str(info.value) or "is not a pycsa" in str(info.value)


def test_unknown_config_keys_are_named(saved):
    path, load = saved
    _rewrite(path, lambda p: p["model_config"].update(wings=2))
    with pytest.raises(ValueError, match=f"checkpoint: {path}: model_config has keys .* not know: wings"):
        load(path)


def test_a_list_as_config_is_refused(saved):
    path, load = saved
    _rewrite(path, lambda p: p.__setitem__("model_config", [1, 2]))
    with pytest.raises(TypeError, match=f"checkpoint: {path}: model_config is a list"):
        load(path)


@pytest.mark.parametrize("change, match", [
    (dict(depth=20000), r"depth: must be an int in \[1, 64\], got 20000"),
    (dict(dim=10**9), "dim: must be an int"),
    (dict(heads=3), "dim: 16 is not divisible by heads=3"),
    (dict(dropout="0.1"), "dropout: must be a number"),
    (dict(depth=2.0), "depth: must be an int"),
])
def test_absurd_configs_are_refused_before_any_layer_is_built(saved, monkeypatch, change, match):
    path, load = saved
    _rewrite(path, lambda p: p["model_config"].update(change))

    def no_layers(*args, **kwargs):
        raise AssertionError("a layer was built before the configuration was checked")

    monkeypatch.setattr(torch.nn.Linear, "__init__", no_layers)
    with pytest.raises((TypeError, ValueError), match=f"checkpoint: {path}: model_config {match}"):
        load(path)


def test_weights_of_another_shape_or_name_are_refused(saved):
    path, load = saved
    name = next(iter(torch.load(path, weights_only=True)["state_dict"]))
    _rewrite(path, lambda p: p["state_dict"].__setitem__(name, torch.zeros(3, 3)))
    with pytest.raises(ValueError, match=f"checkpoint: {path}: state_dict\\['{name}'\\] is .* needs"):
        load(path)
    _rewrite(path, lambda p: p["state_dict"].pop(name))
    with pytest.raises(ValueError, match=f"checkpoint: {path}: state_dict lacks {name}"):
        load(path)


def test_a_checkpoint_lacking_a_config_key_gets_the_default(tmp_path):
    path = tmp_path / "old.pt"
    save_checkpoint(path, CSA(num_anchors=8, dim=16, depth=1, heads=2, drop_path=0.1))
    _rewrite(path, lambda p: p["model_config"].pop("drop_path"))
    assert load_model(path).config["drop_path"] == 0.1
    _rewrite(path, lambda p: p["model_config"].pop("heads"))  # the default, 12, does not divide 16
    with pytest.raises(ValueError, match="16 is not divisible by heads=12 .*lacks heads, drop_path: defaults used"):
        load_model(path)


def test_serving_entry_points_refuse_by_name(tmp_path):
    csa, rrt = tmp_path / "csa.pt", tmp_path / "rrt.pt"
    _csa(csa)
    _rrt(rrt)
    _rewrite(csa, lambda p: p["model_config"].update(depth=20000))
    _rewrite(rrt, lambda p: p["state_dict"]["head.weight"].fill_(np.inf))
    with pytest.raises(ValueError, match=f"checkpoint: {csa}: model_config depth"):
        CSAReranker.load(csa)
    with pytest.raises(ValueError, match=f"checkpoint: {csa}: model_config depth"):
        pycsa.create("csa", checkpoint=csa)
    with pytest.raises(ValueError, match=f"checkpoint: {rrt}: state_dict\\['head.weight'\\] holds NaN or inf"):
        RRTReranker.load(rrt)
    with pytest.raises(ValueError, match=f"checkpoint: {tmp_path} is a directory"):
        load_model(tmp_path)


def test_models_refuse_what_no_checkpoint_could_hold():
    with pytest.raises(ValueError, match="depth"):
        CSA(num_anchors=8, dim=16, depth=65, heads=2)
    with pytest.raises(ValueError, match="global_skip"):
        RRT(global_dim=8, dim=16, heads=2, global_skip=float("nan"))
    # numpy scalars become plain Python values, which weights_only loading accepts
    assert type(CSA(num_anchors=np.int64(8), dim=16, depth=1, heads=2, dropout=np.float32(0.5)).config["dropout"]) \
        is float


# --------------------------------------------------------------------------- array files


def _npy_bytes(shape, payload=b"\0" * 64, descr="<f8"):
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
    return f.getvalue() + payload


def test_npy_header_claiming_1e15_floats_is_refused(tmp_path):
    p = tmp_path / "huge.npy"
    p.write_bytes(_npy_bytes((10**15,)))
    for load in (load_features, load_retrieval_features):
        with pytest.raises(ValueError, match=f"{p}: its header claims .* \\(1000000000000000,\\).* only 64 bytes"):
            load(p)


def test_truncated_npy_is_refused(tmp_path):
    p = tmp_path / "cut.npy"
    np.save(p, np.ones((50, 8), np.float32))
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"{p}: its header claims .* truncated"):
        load_features(p)


def test_npz_member_claiming_1e15_floats_is_refused(tmp_path):
    p = tmp_path / "huge.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("feats.npy", _npy_bytes((10**7, 10**8)))
    with pytest.raises(ValueError, match=f"{p}\\['feats'\\]: its header claims"):
        load_retrieval_features(p)
    with pytest.raises(ValueError, match=f"{p}\\['feats'\\]: its header claims"):
        load_local_descriptors(p)


def test_npz_member_claiming_more_than_deflate_can_hold_is_refused(tmp_path):
    p = tmp_path / "bomb.npz"
    np.savez_compressed(p, feats=np.ones((20, 4), np.float32))
    data = bytearray(p.read_bytes())
    central = data.index(b"PK\x01\x02")  # the central directory's entry: uncompressed size at +24
    data[central + 24:central + 28] = struct.pack("<I", 0x7FFFFFF0)
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{p}\\['feats'\\]: claims .* the file is damaged"):
        load_features(p)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, feats=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match=f"{p}\\['feats'\\]: holds Python objects .*without pickle"):
        load_features(p)


def test_damaged_pt_features_fail_the_crc_check(tmp_path):
    p = tmp_path / "f.pt"
    torch.save({"feats": torch.randn(200, 16)}, p)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{p} is damaged"):
        load_features(p)


def _locals(path, **over):
    arrays = dict(local=np.ones((5, 4), np.float32), offsets=np.array([0, 2, 5]), scale=np.zeros(5, np.int8))
    np.savez(path, **{k: v for k, v in (arrays | over).items() if v is not None})
    return path


def test_local_descriptor_files_are_checked_by_name(tmp_path):
    p = tmp_path / "l.npz"
    assert load_local_descriptors(_locals(p)).num_images == 2
    with pytest.raises(ValueError, match=f"{p}: needs .*'offsets'"):
        load_local_descriptors(_locals(p, offsets=None))
    with pytest.raises(TypeError, match=f"{p}\\['offsets'\\]: expected an array of integers, got torch.float64"):
        load_local_descriptors(_locals(p, offsets=np.array([0.0, 2.5, 5.0])))
    with pytest.raises(TypeError, match=f"{p}\\['local'\\]: expected an array of numbers"):
        load_local_descriptors(_locals(p, local=np.array([["a"] * 4] * 5)))
    with pytest.raises(ValueError, match=f"{p}\\['scale'\\]: has shape \\(4,\\) but there are 5 descriptors"):
        load_local_descriptors(_locals(p, scale=np.zeros(4, np.int64)))
    with pytest.raises(ValueError, match=f"{p}: offsets: the last offset is 6"):
        load_local_descriptors(_locals(p, offsets=np.array([0, 2, 6])))
    with pytest.raises(ValueError, match=f"{tmp_path}: is a directory"):
        load_local_descriptors(tmp_path)


def test_gnd_on_a_directory_names_it(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}: is a directory"):
        load_gnd(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent.pkl"):
        load_gnd(tmp_path / "absent.pkl")


# --------------------------------------------------------------------------- evaluation sizes

def _reid_case():
    rng = np.random.default_rng(0)
    dist = rng.random((4, 6))
    return dist, np.array([1, 2, 1, 3]), np.array([1, 1, 2, 2, 3, 0]), np.zeros(4, int), np.ones(6, int)


def test_reid_max_rank_of_1e9_is_refused_before_allocating():
    dist, qp, gp, qc, gc = _reid_case()
    with pytest.raises(ValueError, match=r"max_rank: 1000000000 would need 7\.5 GiB .* max_rank <= 6"):
        reid(dist, qp, gp, qc, gc, max_rank=10**9)
    for bad in (float("nan"), float("inf"), "5", True):
        with pytest.raises(ValueError, match="max_rank"):
            reid(dist, qp, gp, qc, gc, max_rank=bad)


def test_reid_ranks_past_the_gallery_repeat_the_last_value():
    dist, qp, gp, qc, gc = _reid_case()
    short, m = reid(dist, qp, gp, qc, gc, max_rank=6)
    long, m2 = reid(torch.from_numpy(dist), qp, gp, qc, gc, max_rank=1000)
    assert m == m2 and long.shape == (1000,)
    np.testing.assert_array_equal(long[:6], short)
    assert (long[6:] == short[-1]).all()


def test_reid_nan_ids_are_refused():
    dist, qp, gp, qc, gc = _reid_case()
    with pytest.raises(ValueError, match="g_pids: contains NaN"):
        reid(dist, qp, np.where(gp == 1, np.nan, gp), qc, gc)


GND = [{"easy": [0, 2], "hard": [4], "junk": [1]}, {"easy": [3], "hard": [], "junk": []}]
RANKS = np.array([[0, 1, 2, 3, 4, 5], [3, 5, 4, 2, 1, 0]])


def test_revisited_gnd_index_of_1e12_costs_nothing_without_n_db():
    far = [dict(GND[0], easy=[0, 2, 10**12]), GND[1]]
    unlisted = [dict(GND[0], easy=[0, 2, 6]), GND[1]]  # also a positive the ranking never lists
    got, want = revisited(RANKS, far), revisited(RANKS, unlisted)
    np.testing.assert_array_equal(got["medium"]["aps"], want["medium"]["aps"])


def test_revisited_gnd_index_outside_the_database_is_an_index_error():
    bad = [GND[0], dict(GND[1], hard=[10**12])]
    with pytest.raises(IndexError, match=r"gnd\[1\]\['hard'\]: holds index 1000000000000, but the database has 6"):
        revisited(RANKS, bad, n_db=6)
    with pytest.raises(IndexError, match=r"gnd\[0\]\['junk'\]: holds negative index -1"):
        revisited(RANKS, [dict(GND[0], junk=[-1]), GND[1]])


def test_revisited_sparse_indices_score_as_their_dense_renumbering():
    rng = np.random.default_rng(3)
    n, q = 60, 7
    ranks = np.stack([rng.permutation(n)[:20] for _ in range(q)])
    gnd = [{k: rng.choice(n, 4, replace=False) for k in ("easy", "hard", "junk")} for _ in range(q)]
    spread = 10**9 + 7  # index i becomes i * spread: the tables would need 6e10 columns
    far = [{k: v * spread for k, v in e.items()} for e in gnd]
    dense, sparse = revisited(ranks, gnd), revisited(ranks * spread, far)
    for p in dense:
        np.testing.assert_array_equal(dense[p]["aps"], sparse[p]["aps"])
        assert dense[p]["mP@5"] == sparse[p]["mP@5"]


@pytest.mark.parametrize("score", [
    lambda r: revisited(r, GND, n_db=6)["medium"]["mAP"],
    lambda r: class_map(r, [0, 1], [0, 0, 1, 1, 0, 1]),
    lambda r: bullseye(r, [0, 1], [0, 0, 1, 1, 0, 1]),
], ids=["revisited", "class_map", "bullseye"])
def test_bad_rankings_are_refused_by_every_evaluator(score):
    assert score(RANKS) == score(torch.from_numpy(RANKS)) == score(RANKS.tolist())
    with pytest.raises(ValueError, match="ranks: lists no items per query"):
        score(RANKS[:, :0])
    neg, high = RANKS.copy(), RANKS.copy()
    neg[1, 2], high[1, 2] = -3, 6
    with pytest.raises(IndexError, match=r"ranks: holds negative index -3 \(query 1\)"):
        score(neg)
    with pytest.raises(IndexError, match=r"ranks: holds index 6 \(query 1\), but the database has 6"):
        score(high)
    with pytest.raises(TypeError, match="ranks: expected integer indices"):
        score(RANKS.astype(float))
    with pytest.raises(TypeError, match="ranks: expected integer indices"):
        score(np.where(RANKS == 0, np.nan, RANKS))
    with pytest.raises(ValueError, match="ranks: expected a 2-D array"):
        score(RANKS[0])


def test_nan_labels_and_bad_counts_are_refused():
    with pytest.raises(ValueError, match="db_labels: contains NaN"):
        class_map(RANKS, [0, 1], [0, 0, np.nan, 1, 0, 1])
    with pytest.raises(ValueError, match="top"):
        bullseye(RANKS, [0, 1], [0, 0, 1, 1, 0, 1], top=float("nan"))
    with pytest.raises(ValueError, match="class_size"):
        bullseye(RANKS, [0, 1], [0, 0, 1, 1, 0, 1], class_size=float("inf"))
    with pytest.raises(ValueError, match="n_db"):
        revisited(RANKS, GND, n_db=float("nan"))
    for kappas in ((1, float("nan")), ("5",), (), 5):
        with pytest.raises(ValueError, match="kappas"):
            revisited(RANKS, GND, kappas=kappas)
