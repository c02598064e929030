"""The pycsa command as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

import pycsa
from pycsa.cli import main


def test_demo_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--preset", "small", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cosine (initial search)" in text and "hard mAP" in text
    rows = json.loads(out.read_text())["rows"]
    # every re-ranker, the learned ones trained on a separate synthetic set (rrt with synthetic local descriptors)
    assert [r["method"] for r in rows][1:] == pycsa.available()
    assert "rrt: trained in" in text and "csa: trained in" in text
    medium = {r["method"]: float(r["medium mAP"]) for r in rows}
    # RRT trained on other (synthetic) classes must beat the global ranking it re-ranks (76.18 vs 71.00 when
    # written; 82.5-82.6 with 3 epochs under every ISA build of the kernels)
    assert medium["rrt"] > medium["cosine (initial search)"] + 2
    for r in rows:
        assert 0 <= float(r["medium mAP"]) <= 100


def test_console_script_lists_methods():
    res = subprocess.run([sys.executable, "-m", "pycsa.cli", "methods"], capture_output=True, text=True, check=True)
    assert res.stdout.split() == pycsa.available()


def test_bad_arguments_exit_cleanly(capsys):
    assert main(["demo", "--preset", "small", "--methods", "nope"]) == 2
    assert "unknown re-ranker" in capsys.readouterr().err


# --------------------------------------------------------------------------- pycsa eval

import pickle  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

MPEG7 = "mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def synthetic_gnd_set(tmp_path_factory):
    """A small synthetic Revisited-style set: features as d x N columns in an npz, and a gnd pickle."""
    from pycsa.datasets.synthetic import make_retrieval_preset

    d = make_retrieval_preset("small")
    root = tmp_path_factory.mktemp("gndset")
    feats, gnd = root / "feats.npz", root / "gnd.pkl"
    np.savez(feats, qvecs=d.queries.T, vecs=d.database.T)
    entries = [{k: np.asarray(e[k]).tolist() for k in ("easy", "hard", "junk")} for e in d.gnd]
    with open(gnd, "wb") as f:
        pickle.dump({"imlist": [f"db{i}" for i in range(len(d.database))],
                     "qimlist": [f"q{i}" for i in range(len(d.queries))], "gnd": entries}, f)
    return feats, gnd, d


def test_eval_mpeg7_methods_json_and_plot(shared_data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "e.json", tmp_path / "e.png"
    # The fast methods and a chain: 'all' also runs the top-M/top-T methods (minutes on 2 cores).
    methods = ["alpha_qe", "dba", "diffusion", "gnn", "k_reciprocal", "aqe+dba"]
    assert main(["eval", "--features", str(shared_data / MPEG7), "--method", ",".join(methods),
                 "--json", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "bullseye" in text and "k=1400" in text
    res = json.loads(out.read_text())
    assert res["protocol"] == "classes" and res["k"] == 1400
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["cosine"] + methods
    assert rows["cosine"]["bullseye"] == pytest.approx(74.75, abs=0.005)  # SPEC §10: plain cosine 74.8 %
    for r in rows.values():
        assert 0 < r["mAP"] <= 100 and 0 < r["bullseye"] <= 100 and r["time (s)"] >= 0
    w, h = _png_size(png)
    assert w >= 600 and h >= 400


def test_eval_gnd_on_synthetic_columns(synthetic_gnd_set, tmp_path, capsys):
    feats, gnd, d = synthetic_gnd_set
    out = tmp_path / "r.json"
    assert main(["eval", "--features", str(feats), "--gnd", str(gnd), "--method", "alpha_qe,dba",
                 "--k", "5000", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "transposed" in text and "medium" in text and "mP@10" in text
    res = json.loads(out.read_text())
    assert res["k"] == d.database.shape[0]  # capped at the database size
    assert [(r["method"], r["protocol"]) for r in res["rows"]] == [
        (m, p) for m in ("cosine", "alpha_qe", "dba") for p in ("easy", "medium", "hard")]
    for r in res["rows"]:
        for c in ("mAP", "mP@1", "mP@5", "mP@10"):
            assert 0 <= r[c] <= 100
    # the cosine rows agree with the evaluator run directly
    from pycsa.evaluate import revisited

    _, idx = pycsa.search(d.queries, d.database, d.database.shape[0])
    direct = revisited(idx, d.gnd)
    assert res["rows"][1]["mAP"] == pytest.approx(100 * direct["medium"]["mAP"], abs=0.006)


def test_eval_gnd_plot(synthetic_gnd_set, tmp_path):
    pytest.importorskip("matplotlib")
    feats, gnd, _ = synthetic_gnd_set
    png = tmp_path / "r.png"
    assert main(["eval", "--features", str(feats), "--gnd", str(gnd), "--method", "aqe", "--plot", str(png)]) == 0
    w, h = _png_size(png)
    assert w >= 600 and h >= 400


def test_eval_reid_mat(tmp_path, capsys):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 24))

    def make(n):
        pid = rng.integers(0, 30, n)
        f = centres[pid] + 0.7 * rng.normal(size=(n, 24))
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32), pid

    q, qp = make(25)
    g, gp = make(200)
    p = tmp_path / "pytorch_result.mat"
    scipy_io.savemat(p, {"query_f": q, "gallery_f": g, "query_label": qp[None], "gallery_label": gp[None],
                         "query_cam": np.ones((1, 25)), "gallery_cam": rng.integers(1, 4, (1, 200))})
    out = tmp_path / "reid.json"
    assert main(["eval", "--features", str(p), "--method", "aqe", "--json", str(out)]) == 0
    assert "rank-1" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["cosine", "aqe"]
    for r in rows:
        assert 0 <= r["mAP"] <= 100 and r["rank-1"] <= r["rank-5"] <= r["rank-10"] <= 100
    # the cosine row agrees with the evaluator on the full distance matrix
    from pycsa.evaluate import reid

    cmc, m = reid(1.0 - q.astype(np.float64) @ g.T.astype(np.float64), qp, gp, np.ones(25), scipy_io.loadmat(p)["gallery_cam"][0])
    assert rows[0]["mAP"] == pytest.approx(100 * m, abs=0.01)
    assert rows[0]["rank-1"] == pytest.approx(100 * cmc[0], abs=0.01)


def test_eval_errors_exit_2(synthetic_gnd_set, tmp_path, capsys):
    feats, gnd, d = synthetic_gnd_set
    # a gnd for fewer queries than the features have
    short = tmp_path / "short.pkl"
    g = pickle.loads(gnd.read_bytes())
    with open(short, "wb") as f:
        pickle.dump({**g, "qimlist": g["qimlist"][:-1], "gnd": g["gnd"][:-1]}, f)
    cases = [
        (["--features", str(feats), "--gnd", str(short)], f"has {d.queries.shape[0] - 1} queries but the features have"),
        (["--features", str(tmp_path / "missing.npz")], "missing.npz"),
        (["--features", str(gnd)], "unknown extension"),
        (["--features", str(feats)], "has no labels"),
        (["--features", str(feats), "--labels"], "has no labels"),
        (["--features", str(feats), "--gnd", str(gnd), "--method", "nope"], "unknown re-ranker 'nope'"),
        (["--features", str(feats), "--gnd", str(gnd), "--k", "0"], "--k"),
    ]
    for argv, message in cases:
        try:
            code = main(["eval", *argv])
        except SystemExit as exc:  # argparse's checks (--k) leave this way, with the same one line
            code = exc.code
        assert code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("pycsa: error:") and message in err, (argv, err)


def test_eval_gnd_and_labels_are_exclusive(synthetic_gnd_set, capsys):
    feats, gnd, _ = synthetic_gnd_set
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--features", str(feats), "--gnd", str(gnd), "--labels"])
    assert exc.value.code == 2 and "not allowed" in capsys.readouterr().err


def test_train_refuses_an_unknown_device(capsys):
    import pycsa.cli

    for bad, says in (("gpu", "not a device"), ("meta", "cpu or cuda")):
        with pytest.raises(SystemExit) as exc:
            pycsa.cli.main(["train", "--features", "x.npz", "--device", bad])
        assert exc.value.code == 2 and says in capsys.readouterr().err


# --------------------------------------------------------------------------- output, demo pieces


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_in_a_log_is_a_few_lines(monkeypatch):
    import io

    from pycsa.cli import output

    clock = _Clock()
    monkeypatch.setattr(output.time, "monotonic", clock)
    log = io.StringIO()  # not a terminal
    with output.progress_bar("work", unit="query", stream=log) as cb:
        for done in range(1, 1001):  # 1,000 updates over 100 s
            clock.now = done * 0.1
            cb(done, 1000)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert 9 <= len(lines) <= 11  # one every 10 s, and the last
    assert lines[-1] == "work: 1000/1000 queries (100%), 100.0 s"
    quick = io.StringIO()
    with output.progress_bar("quick", stream=quick) as cb:
        clock.now = 200.5  # done within a second: nothing at all
        cb(5, 5)
    assert quick.getvalue() == ""


def test_demo_trains_rrt_on_the_test_sets_dimension(monkeypatch):
    # the demo's RRT once trained on d=64 and then met the 'roxford' preset's d=128
    import argparse

    from pycsa.cli import demo
    from pycsa.datasets.synthetic import make_retrieval_preset

    seen = {}

    class _Done(Exception):
        pass

    def fake_train(G, local, labels, **kwargs):
        seen["dim"] = np.asarray(G).shape[1]
        raise _Done

    monkeypatch.setattr(pycsa.rrt, "train", fake_train)
    data = make_retrieval_preset("roxford", seed=0)
    with pytest.raises(_Done):
        demo._demo_rrt(argparse.Namespace(seed=0), data, {"checkpoints": {}})
    assert seen["dim"] == data.database.shape[1] == 128


# --------------------------------------------------------------------------- index-based re-ID files


def _index_reid_file(tmp_path, splits=None, drop=None):
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(12), 6)
    cams = np.tile(np.arange(6), 12)
    feats = rng.normal(size=(12, 16))[pids] + 0.8 * rng.normal(size=(72, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    query_idx = np.nonzero(cams == 0)[0]
    gallery_idx = np.nonzero(cams != 0)[0]
    data = dict(feats=feats.astype(np.float32), pids=pids, cams=cams, query_idx=query_idx, gallery_idx=gallery_idx)
    if splits is not None:
        data["test_pids_splits"] = splits
    data.pop(drop, None)
    path = tmp_path / "reid_index.npz"
    np.savez(path, **data)
    return path, data


def test_index_based_reid_file_is_read_as_reid(tmp_path):
    from pycsa.datasets import load_retrieval_features

    path, d = _index_reid_file(tmp_path)
    fs = load_retrieval_features(path)
    assert fs.has_cams and not fs.queries_are_database
    np.testing.assert_array_equal(fs.queries, d["feats"][d["query_idx"]])
    np.testing.assert_array_equal(fs.db_cams, d["cams"][d["gallery_idx"]])
    np.testing.assert_array_equal(fs.query_labels, d["pids"][d["query_idx"]])
    assert len(fs.splits()) == 1


@pytest.mark.parametrize("drop,words", [("cams", "no cameras"), ("pids", "no identities"),
                                        ("gallery_idx", "no gallery rows")])
def test_index_based_reid_file_missing_a_key_is_refused(tmp_path, drop, words):
    from pycsa.datasets import load_retrieval_features

    path, _ = _index_reid_file(tmp_path, drop=drop)
    with pytest.raises(ValueError, match=f"index-based re-ID file .*{words}"):
        load_retrieval_features(path)


def test_index_based_reid_rows_out_of_range_are_refused(tmp_path):
    from pycsa.datasets import load_retrieval_features

    path, d = _index_reid_file(tmp_path)
    np.savez(path, **dict(d, query_idx=np.array([0, 72])))
    with pytest.raises(ValueError, match="query_idx.*row numbers must lie in \\[0, 71\\]"):
        load_retrieval_features(path)


def test_eval_averages_the_splits_of_an_index_based_file(tmp_path, capsys):
    from pycsa.datasets import load_retrieval_features
    from pycsa.evaluate import reid

    splits = np.array([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    path, _ = _index_reid_file(tmp_path, splits=splits)
    out = tmp_path / "r.json"
    assert main(["eval", "--features", str(path), "--method", "alpha_qe", "--json", str(out)]) == 0
    assert "the mean over the file's 2 splits" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert json.loads(out.read_text())["protocol"] == "reid"
    # the cosine row is the mean of the two splits scored on their own
    parts = load_retrieval_features(path).splits()
    want = []
    for part in parts:
        sim = part.queries @ part.database.T
        _, m = reid(1 - sim, part.query_labels, part.db_labels, part.query_cams, part.db_cams)
        want.append(100 * m)
        assert set(np.unique(part.query_labels)) <= set(splits[len(want) - 1])
    assert rows[0]["method"] == "cosine"
    assert abs(rows[0]["mAP"] - np.mean(want)) < 0.011


# --------------------------------------------------------------------------- errors: one line, no traceback


def test_file_errors_are_one_line_with_exit_2(tmp_path, capsys):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip archive")
    text = tmp_path / "notes.npy"
    text.write_text("hello")
    cases = [
        (["eval", "--features", str(tmp_path)], str(tmp_path)),  # a folder where a file belongs
        (["eval", "--features", str(garbage)], "garbage.npz"),
        (["eval", "--features", str(text)], "notes.npy"),
        (["rerank", "--features", str(tmp_path / "none.npz"), "--method", "alpha_qe", "--out", str(tmp_path / "o.npz")], "none.npz"),
    ]
    for argv, names in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("pycsa: error:") and names in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_bug_is_one_line_exit_1_and_the_traceback_on_request(monkeypatch, capsys):
    import pycsa.cli.demo as demo

    def broken(args):
        raise RuntimeError("invariant broken")

    monkeypatch.setattr(demo, "run", broken)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "pycsa: error: invariant broken" in err and "PYCSA_TRACEBACK=1" in err and "Traceback" not in err
    monkeypatch.setenv("PYCSA_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="invariant broken"):
        main(["demo"])


def test_key_errors_print_their_message_not_a_repr(monkeypatch, capsys):
    import pycsa.cli.demo as demo

    def missing(args):
        raise KeyError("features.npz: no array 'vecs'")

    monkeypatch.setattr(demo, "run", missing)
    assert main(["demo"]) == 2
    assert capsys.readouterr().err.strip() == "pycsa: error: features.npz: no array 'vecs'"


def test_extract_refuses_an_unknown_device(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--images", str(tmp_path), "--out", str(tmp_path / "f.npz"), "--device", "tpu"])
    assert exc.value.code == 2 and "not a device" in capsys.readouterr().err
