"""Bad input to the library's Python API: each error names the argument, key or file at fault."""
import pickle

import numpy as np
import pytest
import torch

import pycsa
from pycsa import ops
from pycsa.datasets import load_gnd, load_retrieval_features
from pycsa.evaluate import revisited
from pycsa.ranking import Chain
from pycsa.search import Index
from pycsa.tune import create_from_config, tune


def _config(params):
    return {"format": 1, "methods": {"aqe": {"stages": [["aqe", params]], "score": 1.0, "default_score": 1.0}}}


def _features(n=20, d=5, seed=0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1)


# --- 1. create / create_from_config parameters ---

def test_create_names_an_unknown_parameter_and_what_it_takes():
    with pytest.raises(TypeError, match=r"^kk: aqe takes no parameter 'kk' \(it takes k"):
        pycsa.create("aqe", kk=3)


def test_create_from_config_refuses_foreign_and_conflicting_parameters():
    with pytest.raises(ValueError, match=r"^config: .*aqe takes no parameter 'alpha'"):
        create_from_config(_config({"alpha": 3.0}), "aqe")
    with pytest.raises(ValueError, match=r"^aqe: sets k, which the config already tunes"):
        create_from_config(_config({"k": 3}), "aqe", aqe={"k": 5})
    # a misspelt learned stage would otherwise be dropped without a word
    with pytest.raises(TypeError, match=r"^cas: no stage of 'aqe'"):
        create_from_config(_config({"k": 3}), "aqe", cas={"checkpoint": "csa.pt"})
    assert create_from_config(_config({"k": 3}), "aqe").name == "aqe"


# --- 2. Index, progress, tune, Chain, affinity ---

@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_index_notices_its_database_changed_in_place(kind):
    X = _features(7)
    if kind == "numpy":
        X = X.numpy()
    index = Index(X, backend="torch")
    index.search(X[:2], 3)
    X[0] = float("nan")
    with pytest.raises(ValueError, match=r"^database: changed in place since the Index was built"):
        index.search(X[1:3], 3)


def test_progress_must_be_callable():
    X = _features()
    with pytest.raises(TypeError, match=r"^progress: expected a callable"):
        pycsa.search(X, X, 3, progress=3)
    with pytest.raises(TypeError, match=r"^progress: expected a callable"):
        tune(["aqe"], X, X, lambda r: 1.0, progress=3)


def test_tune_refuses_lists_by_name():
    X = _features().tolist()
    with pytest.raises(TypeError, match=r"^Q: expected a torch.Tensor or numpy.ndarray"):
        tune(["aqe"], X, X, lambda r: 1.0)


def test_chain_of_none_names_rerankers():
    with pytest.raises(TypeError, match=r"^rerankers: "):
        Chain(None)


def test_affinity_with_empty_ranks_names_ranks():
    with pytest.raises(ValueError, match=r"^ranks: has 0 columns"):
        ops.affinity(_features(), torch.zeros(3, 0, dtype=torch.long), 1)


# --- 3. revisited ---

def _gnd(n_q=2):
    return [{"easy": [0, 1], "hard": [2], "junk": []} for _ in range(n_q)]


def test_revisited_refuses_uint64_indices_beyond_int64():
    gnd = _gnd()
    gnd[1]["hard"] = np.array([2 ** 63 + 5], dtype=np.uint64)
    ranks = np.tile(np.arange(4), (2, 1))
    with pytest.raises(IndexError, match=r"^gnd\[1\]\['hard'\]: holds index 9223372036854775813"):
        revisited(ranks, gnd)
    with pytest.raises(IndexError, match=r"^ranks: holds index .*\(query 0\)"):
        revisited(np.full((2, 1), 2 ** 63, dtype=np.uint64), _gnd())


def test_revisited_kappas_and_imlist():
    ranks = np.tile(np.arange(4), (2, 1))
    with pytest.raises(ValueError, match=r"^kappas: "):
        revisited(ranks, _gnd(), kappas=(2 ** 70,))
    with pytest.raises(ValueError, match=r"^gnd: 'imlist' is a int"):
        revisited(ranks, {"gnd": _gnd(), "imlist": 5})


# --- 4. loaders ---

def test_same_shape_matrices_follow_the_labels_then_the_keys(tmp_path):
    Q, X = np.random.default_rng(0).standard_normal((2, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "rev.npz", qvecs=Q, vecs=X)  # d x N, as the Revisited files store them
    fs = load_retrieval_features(tmp_path / "rev.npz")
    assert fs.transposed and np.array_equal(fs.queries, Q.T)
    np.savez(tmp_path / "gen.npz", queries=Q, database=X)  # pycsa's own keys: rows are items
    fs = load_retrieval_features(tmp_path / "gen.npz")
    assert not fs.transposed and np.array_equal(fs.queries, Q)
    # labels whose counts fit one orientation decide it
    Q6, X6 = Q[:, :6], X[:, :6]
    np.savez(tmp_path / "lab.npz", queries=Q6, database=X6, query_labels=np.arange(6), db_labels=np.arange(6))
    fs = load_retrieval_features(tmp_path / "lab.npz")
    assert fs.transposed and fs.queries.shape == (6, 8)


def test_load_gnd_refuses_non_string_image_names(tmp_path):
    p = tmp_path / "gnd.pkl"
    p.write_bytes(pickle.dumps({"imlist": ["a", 5], "qimlist": ["q"],
                                "gnd": [{"easy": [0], "hard": [], "junk": []}]}))
    with pytest.raises(ValueError, match=r"gnd\.pkl: 'imlist'\[1\] is 5"):
        load_gnd(p)


def test_reid_split_without_gallery_items_is_named(tmp_path):
    feats = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    p = tmp_path / "reid.npz"
    # identity 3 has a query (row 4) but no gallery row
    np.savez(p, feat=feats, labels=np.array([1, 1, 2, 2, 3, 3]), cams=np.arange(6), query_idx=np.array([0, 4]),
             gallery_idx=np.array([1, 2, 3]), test_pids_splits=np.array([[1], [3]]))
    with pytest.raises(ValueError, match=r"split 1 names no identity of the gallery"):
        load_retrieval_features(p)


@pytest.mark.parametrize("kind", ["meta", "nested"])
def test_pt_with_valueless_tensor_is_named(tmp_path, kind):
    t = torch.empty(3, 4, device="meta") if kind == "meta" else torch.nested.nested_tensor([torch.rand(2, 4)])
    p = tmp_path / "x.pt"
    torch.save({"feats": t}, p)
    with pytest.raises(ValueError, match=rf"x\.pt\['feats'\]: holds a {kind} tensor; save a dense one"):
        load_retrieval_features(p)
