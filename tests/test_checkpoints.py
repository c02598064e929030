"""Training checkpoints that never lose work: a resumed run equals the uninterrupted one bit for
bit with dropout on (CSA and RRT, API and CLI), writes are atomic with a file of their own,
and a second writer of the same path is refused by name."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import pycsa
from pycsa.cli import main
from pycsa.csa import train as train_csa
from pycsa.datasets.local import make_local_descriptors
from pycsa.rerank.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, writing
from pycsa.rrt import train as train_rrt

from _interrupt import Stop, stop_after_steps


def _features(n=64, d=16, classes=8, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n // classes)
    X = rng.standard_normal((classes, d))[y] + 0.8 * rng.standard_normal((y.size, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


def _same_weights(a, b):
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_csa_resumed_mid_epoch_equals_the_uninterrupted_run_with_dropout(tmp_path):
    X, y = _features()
    cfg = dict(K=12, L=8, dim=32, depth=2, heads=2, batch_size=8, lr=0.05, dropout=0.3, drop_path=0.2, seed=5,
               epochs=3)
    full = train_csa(X, y, **cfg)
    path = tmp_path / "csa.pt"
    with pytest.raises(Stop):  # killed in the middle of epoch 3: epochs 1-2 are saved
        train_csa(X, y, checkpoint=path, progress=stop_after_steps(2 * 8 + 3), **cfg)
    assert load_checkpoint(path, fmt="pycsa.csa", what="", how="")["epoch"] == 2
    random.random(), np.random.rand(), torch.rand(3)  # the resuming process's generators are elsewhere
    resumed = train_csa(X, y, resume=path, checkpoint=path, **cfg)
    _same_weights(full.model, resumed.model)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_rrt_resumes_and_equals_the_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 8)
    G = rng.standard_normal((8, 16))[y] + 1.2 * rng.standard_normal((y.size, 16))
    G = (G / np.linalg.norm(G, axis=1, keepdims=True)).astype(np.float32)
    local = make_local_descriptors(y, dim=16, min_count=4, max_count=12, seed=1)
    cfg = dict(topk=20, dim=16, depth=2, heads=2, ffn=32, epochs=3, batch_size=8, lr=3e-3, dropout=0.2, seed=2)
    full = train_rrt(G, local, y, **cfg)
    path = tmp_path / "rrt.pt"
    with pytest.raises(Stop):
        train_rrt(G, local, y, checkpoint=path, progress=stop_after_steps(9), **cfg)  # within epoch 2 or later
    epoch = load_checkpoint(path, fmt="pycsa.rrt", what="", how="")["epoch"]
    assert 1 <= epoch < 3
    torch.rand(5)
    resumed = train_rrt(G, local, y, resume=path, checkpoint=path, **cfg)
    _same_weights(full.model, resumed.model)
    assert len(resumed.history) == 3
    with pytest.raises(ValueError, match="resume: .* another model \\(depth differ\\)"):
        train_rrt(G, local, y, resume=path, **dict(cfg, depth=1))


def test_cli_rrt_resume_is_honoured(tmp_path, capsys):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(6), 8)
    G = rng.standard_normal((6, 16))[y] + rng.standard_normal((y.size, 16))
    G = (G / np.linalg.norm(G, axis=1, keepdims=True)).astype(np.float32)
    local = make_local_descriptors(y, dim=16, min_count=4, max_count=10, seed=3)
    np.savez(tmp_path / "f.npz", feats=G, labels=y)
    np.savez(tmp_path / "l.npz", local=local.descriptors.numpy(), offsets=local.offsets.numpy(),
             scale=local.scales.numpy())
    args = ["train", "--method", "rrt", "--features", str(tmp_path / "f.npz"), "--locals", str(tmp_path / "l.npz"),
            "--depth", "1", "--heads", "2", "--ffn", "32", "--batch-size", "8", "--topk", "20"]
    assert main(args + ["--epochs", "2", "--out", str(tmp_path / "a.pt")]) == 0
    capsys.readouterr()
    assert main(args + ["--epochs", "3", "--resume", str(tmp_path / "a.pt"), "--out", str(tmp_path / "a.pt")]) == 0
    out = capsys.readouterr().out
    assert "epoch   3" in out and "epoch   1" not in out  # it continued, it did not start again
    assert load_checkpoint(tmp_path / "a.pt", fmt="pycsa.rrt", what="", how="")["epoch"] == 3


def test_a_second_writer_of_the_same_path_is_refused(tmp_path):
    X, y = _features(n=32)
    path = tmp_path / "c.pt"
    with writing(path):
        with pytest.raises(ValueError, match=f"checkpoint: {path} is being written by process {os.getpid()}"):
            train_csa(X, y, K=8, L=8, dim=16, depth=1, heads=1, epochs=1, batch_size=8, checkpoint=path)
    assert not (tmp_path / "c.pt.lock").exists()
    # a lock file left by a killed run holds no lock: the next run takes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "c.pt.lock").write_text(f"process {int(dead.stdout)} on somewhere")
    train_csa(X, y, K=8, L=8, dim=16, depth=1, heads=1, epochs=1, batch_size=8, checkpoint=path)
    assert path.is_file() and not (tmp_path / "c.pt.lock").exists()
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_cli_second_run_on_the_same_out_is_a_one_line_error(tmp_path, capsys):
    X, y = _features(n=32)
    np.savez(tmp_path / "f.npz", feats=X, labels=y)
    with writing(tmp_path / "c.pt"):
        assert main(["train", "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "c.pt"), "--epochs",
                     "1", "--K", "8", "--L", "8", "--dim", "16", "--heads", "1", "--depth", "1"]) == 2
    assert "is being written by process" in capsys.readouterr().err


def test_concurrent_saves_never_leave_a_reader_with_half_a_file(tmp_path):
    model = pycsa.csa.CSA(num_anchors=8, dim=16, depth=1, heads=1)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, fmt="pycsa.csa", epoch=0)
    errors = []

    def writer(i):
        try:
            for e in range(15):
                save_checkpoint(path, model, fmt="pycsa.csa", epoch=e, who=i)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    reads = 0
    while any(t.is_alive() for t in threads):
        load_checkpoint(path, fmt="pycsa.csa", what="CSA", how="")
        reads += 1
    for t in threads:
        t.join()
    assert not errors and reads > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_a_bare_checkpoint_path_may_hold_an_equals_sign():
    from pycsa.cli.rerankers import checkpoints

    assert checkpoints(["runs/lr=0.1/csa.pt"], check_files=False) == {"csa": "runs/lr=0.1/csa.pt"}
    assert checkpoints(["rrt=runs/a.pt", "csa=b.pt"], check_files=False) == {"rrt": "runs/a.pt", "csa": "b.pt"}
    with pytest.raises(ValueError, match="'gnn' is not a learned re-ranker"):
        checkpoints(["gnn=x.pt"])
    with pytest.raises(ValueError, match="csa=runs/lr=0.1/csa.pt: no such file"):  # checked before any work
        checkpoints(["runs/lr=0.1/csa.pt"])
