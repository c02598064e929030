"""The pycsa command on hostile input: every user error is one `pycsa: error:` line naming
the option, exit 2, raised before the work (and its output) starts."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from pycsa.cli import main


def _run(argv):
    """main's exit code: argparse's errors leave by SystemExit, run-time ones by the return value."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _one_error(capsys, *words):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pycsa: error:"), err
    for w in words:
        assert w in lines[0], (w, err)
    return lines[0]


@pytest.fixture
def labelled(tmp_path):
    """One labelled matrix (class protocol): 6 classes x 8 items, 16-d."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 8)
    X = rng.normal(size=(6, 16))[y] + 0.5 * rng.normal(size=(48, 16))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    np.savez(tmp_path / "cls.npz", feats=X, labels=y)
    return tmp_path / "cls.npz"


@pytest.fixture
def no_hard(tmp_path):
    """Queries and database with a Revisited gnd in which no query has a hard positive."""
    rng = np.random.default_rng(1)
    Q, X = rng.normal(size=(4, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    np.savez(tmp_path / "f.npz", qvecs=Q.T, vecs=X.T)
    gnd = {"imlist": [f"db{i}" for i in range(40)], "qimlist": [f"q{i}" for i in range(4)],
           "gnd": [{"easy": [i, i + 4], "hard": [], "junk": [i + 8]} for i in range(4)]}
    with open(tmp_path / "gnd_nohard.pkl", "wb") as f:
        pickle.dump(gnd, f)
    return tmp_path / "f.npz", tmp_path / "gnd_nohard.pkl"


# 1. a protocol without positives: n/a in the table, null (valid JSON) in the file


def test_eval_writes_null_not_nan_for_a_protocol_without_positives(no_hard, tmp_path, capsys):
    feats, gnd = no_hard
    out = tmp_path / "x.json"
    assert main(["eval", "--features", str(feats), "--gnd", str(gnd), "--method", "aqe", "--json", str(out)]) == 0
    text = out.read_text()
    assert "NaN" not in text
    rows = json.loads(text)["rows"]  # strict: json.loads would accept NaN, so check the tokens above too
    hard = [r for r in rows if r["protocol"] == "hard"]
    assert hard and all(r["mAP"] is None for r in hard)
    assert all(isinstance(r["mAP"], float) for r in rows if r["protocol"] == "easy")
    shown = capsys.readouterr().out
    table = shown[shown.index("method"):shown.index("scores in percent")]
    assert "n/a" in table and "nan" not in table.lower()


# 2. method lists: a name twice, a blank entry


@pytest.mark.parametrize("spec, words", [("aqe,aqe", "'aqe' is named twice"), ("aqe,,dba", "blank entry"),
                                         ("aqe,", "blank entry")])
def test_eval_refuses_repeated_or_blank_methods(labelled, tmp_path, capsys, spec, words):
    png = tmp_path / "x.png"
    assert _run(["eval", "--features", str(labelled), "--method", spec, "--plot", str(png)]) == 2
    _one_error(capsys, "--method:", words)
    assert not png.exists()


def test_demo_names_its_own_option(capsys):
    assert _run(["demo", "--preset", "small", "--methods", "dba,dba"]) == 2
    assert "--method:" not in _one_error(capsys, "--methods:", "'dba' is named twice")


def test_all_with_a_named_method_runs_it_once(labelled, tmp_path):
    from pycsa.cli.rerankers import parse_methods

    names = parse_methods("aqe,all")
    assert names.count("aqe") == 1 and names[0] == "aqe"


# 3. input nested past the recursion limit is bad input, not a bug


def test_deeply_nested_config_is_a_user_error(labelled, tmp_path, capsys):
    config = tmp_path / "deep.json"
    config.write_text("[" * 100_000 + "]" * 100_000)
    assert _run(["eval", "--features", str(labelled), "--config", str(config)]) == 2
    _one_error(capsys, "--config:", "nested too deeply")


def test_a_nested_tensor_in_features_is_a_user_error(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    with pytest.warns(UserWarning):  # nested tensors are a prototype in torch
        t = torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(3, 3)])
    torch.save({"feats": t, "labels": torch.arange(2)}, tmp_path / "nested.pt")
    assert _run(["eval", "--features", str(tmp_path / "nested.pt")]) == 2
    _one_error(capsys, "nested.pt")


# 4. output paths: the name really written, checked before the work, no stray temporary file


def test_rerank_and_eval_print_the_file_they_wrote(labelled, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["rerank", "--features", str(labelled), "--method", "aqe", "--k", "10",
                 "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o.npz").is_file() and f"wrote {tmp_path / 'o.npz'} " in capsys.readouterr().out
    assert main(["eval", "--features", str(labelled), "--method", "aqe", "--plot", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p.png").is_file() and f"wrote {tmp_path / 'p.png'}\n" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls.npz", "o.npz", "p.png"]  # no .tmp left


@pytest.mark.parametrize("command, option", [
    (["tune", "--method", "aqe"], "--out"), (["rerank", "--method", "aqe"], "--out"),
    (["eval", "--method", "aqe"], "--json"), (["eval", "--method", "aqe"], "--plot"),
    (["train", "--epochs", "1"], "--out")])
def test_an_output_path_that_is_a_folder_is_refused_before_the_work(labelled, tmp_path, capsys, command, option):
    if option == "--plot":
        pytest.importorskip("matplotlib")
    # the names these commands would write (tune wants .json; numpy, matplotlib append .npz, .png)
    folder = tmp_path / {"tune": "d.json", "rerank": "d.npz", }.get(command[0], "d.png" if option == "--plot" else "d")
    folder.mkdir()
    assert _run([command[0], "--features", str(labelled), *command[1:], option, str(folder)]) == 2
    _one_error(capsys, f"{option}:", "is a directory")
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["cls.npz", folder.name]


def test_an_output_folder_under_a_file_is_refused(labelled, tmp_path, capsys):
    assert _run(["eval", "--features", str(labelled), "--json", str(labelled / "x.json")]) == 2
    _one_error(capsys, "--json:", "cannot write")


def test_a_failed_write_removes_its_temporary_file(tmp_path):
    from pycsa.cli.output import written

    (tmp_path / "t.json").mkdir()  # appears between the check and the write
    with pytest.raises(OSError):
        with written(tmp_path / "t.json") as tmp, open(tmp, "w") as f:
            f.write("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


# 5. numeric options checked and named as typed, before any work


@pytest.mark.parametrize("argv, option", [
    (["eval", "--features", "f.npz", "--k", "0"], "--k"),
    (["eval", "--features", "f.npz", "--csa-k", "-3"], "--csa-k"),
    (["rerank", "--features", "f.npz", "--method", "aqe", "--out", "o", "--rrt-top", "x"], "--rrt-top"),
    (["demo", "--k", "0"], "--k"),
    (["demo", "--seed", "-1"], "--seed"),
    (["train", "--features", "f.npz", "--out", "c.pt", "--lr", "nan"], "--lr"),
    (["train", "--features", "f.npz", "--out", "c.pt", "--dropout", "1"], "--dropout"),
    (["train", "--features", "f.npz", "--out", "c.pt", "--batch-size", "0"], "--batch-size"),
    (["train", "--features", "f.npz", "--out", "c.pt", "--tau", "inf"], "--tau"),
    (["tune", "--features", "f.npz", "--out", "t.json", "--margin", "-1"], "--margin"),
])
def test_numeric_options_are_checked_under_their_own_name(capsys, argv, option):
    # argparse's types name the option; the errors leave through SystemExit(2)
    assert _run(argv) == 2
    _one_error(capsys, f"argument {option}:")


def test_tune_refuses_an_infinite_budget(labelled, tmp_path, capsys):
    assert _run(["tune", "--features", str(labelled), "--budget", "inf", "--out", str(tmp_path / "t.json")]) == 2
    _one_error(capsys, "--budget:")


# 6. options for a learned method that is not run


@pytest.mark.parametrize("extra, option, method", [
    (["--csa-k", "64"], "--csa-k", "csa"), (["--rrt-top", "10"], "--rrt-top", "rrt")])
def test_options_of_a_method_not_run_are_refused(labelled, capsys, extra, option, method):
    assert _run(["eval", "--features", str(labelled), "--method", "aqe", *extra]) == 2
    _one_error(capsys, f"{option}:", f"only {method} uses it")


def test_a_checkpoint_for_a_method_not_run_is_refused(labelled, tmp_path, capsys):
    ckpt = tmp_path / "csa.pt"
    ckpt.write_bytes(b"")
    assert _run(["eval", "--features", str(labelled), "--method", "aqe", "--checkpoint", f"csa={ckpt}"]) == 2
    _one_error(capsys, "--checkpoint csa=...:", "only csa uses it")


def test_a_missing_checkpoint_is_refused_up_front(labelled, tmp_path, capsys):
    assert _run(["eval", "--features", str(labelled), "--method", "csa",
                 "--checkpoint", f"csa={tmp_path / 'missing.pt'}"]) == 2
    _one_error(capsys, "--checkpoint:", "missing.pt: no such file")
