"""`pycsa extract` on folders of generated images: what it writes, what it skips, how it resumes,
and the README's four commands from images to a re-ranked, evaluated result."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pycsa.cli import main
from pycsa.datasets import load_local_descriptors, load_retrieval_features
from pycsa.extract import extract_to_file
from pycsa.extract.backbones import BACKBONES

from _interrupt import Stop, stop_after_calls

Image = pytest.importorskip("PIL.Image")
README = Path(__file__).resolve().parents[1] / "README.md"


def make_photos(root: Path, classes: int = 3, per_class: int = 6, size=(96, 72), odd: bool = True, seed: int = 0):
    """Class folders of images: each class a random pattern, each image a noisy, shifted,
    rescaled copy. With ``odd``: a greyscale and a tiny image, a truncated JPEG, a text file
    named .png (both unreadable) and a .txt (not an image, not listed)."""
    rng = np.random.default_rng(seed)
    names = []
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        pattern = rng.integers(0, 255, (6, 6, 3)).astype(np.uint8)
        for i in range(per_class):
            w = size[0] + 8 * (i % 3)
            im = np.asarray(Image.fromarray(pattern).resize((w, size[1]), Image.BILINEAR)).astype(int)
            im = np.roll(im, i, axis=1) + rng.integers(-25, 25, im.shape)
            Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(folder / f"img{i}.jpg")
            names.append(f"class{c}/img{i}.jpg")
    if odd:
        Image.fromarray(rng.integers(0, 255, (40, 50)).astype(np.uint8), "L").save(root / "class0" / "grey.png")
        Image.fromarray(np.full((3, 5, 3), 200, np.uint8)).save(root / "class1" / "tiny.png")
        good = (root / "class0" / "img0.jpg").read_bytes()
        (root / "class2" / "truncated.jpg").write_bytes(good[: len(good) // 3])
        (root / "class2" / "notes.png").write_text("not an image")
        (root / "class1" / "readme.txt").write_text("ignored")
        names += ["class0/grey.png", "class1/tiny.png"]
    return sorted(names)


def _extract(photos, out, *extra):
    return main(["extract", "--images", str(photos), "--out", str(out), "--backbone", "resnet18", "--weights",
                 "random", "--size", "128", "--workers", "0", "--dtype", "float32", *extra])


def test_one_descriptor_per_readable_image_and_the_unreadable_named(tmp_path, capsys):
    expected = make_photos(tmp_path / "photos")
    assert _extract(tmp_path / "photos", tmp_path / "f.npz", "--labels", "folders") == 0
    out = capsys.readouterr().out
    assert "skipped unreadable class2/truncated.jpg" in out and "skipped unreadable class2/notes.png" in out
    assert f"{len(expected)} of {len(expected) + 2} images" in out
    with np.load(tmp_path / "f.npz") as z:
        assert list(z["names"]) == expected
        assert sorted(z["unreadable"]) == ["class2/notes.png", "class2/truncated.jpg"]
        assert z["feats"].shape == (len(expected), 512) and np.isfinite(z["feats"]).all()
        np.testing.assert_allclose(np.linalg.norm(z["feats"], axis=1), 1.0, rtol=1e-5)
        assert list(z["label_names"]) == ["class0", "class1", "class2"]
        assert [z["label_names"][i] for i in z["labels"]] == [n.split("/")[0] for n in expected]
    fs = load_retrieval_features(tmp_path / "f.npz")
    assert fs.queries_are_database and fs.has_labels and list(fs.names) == expected
    assert not (tmp_path / "f.npz.partial").exists()


def test_locals_are_in_the_store_rrt_reads(tmp_path, capsys):
    names = make_photos(tmp_path / "photos", odd=False)
    assert _extract(tmp_path / "photos", tmp_path / "f.npz", "--locals", "--max-local", "7", "--local-dim", "16") == 0
    loc = load_local_descriptors(tmp_path / "f.npz")
    assert loc.num_images == len(names) and loc.dim == 16
    assert loc.counts.tolist() == [7] * len(names)
    np.testing.assert_allclose(loc.descriptors.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    assert set(loc.scales.tolist()) <= {0, 1, 2}
    with np.load(tmp_path / "f.npz") as z:
        assert z["positions"].shape == (7 * len(names), 2) and (z["positions"] >= 0).all()
        assert z["local_pca_components"].shape == (16, 512)
    # a second set projected with the first one's PCA (training and test images must share it)
    assert _extract(tmp_path / "photos", tmp_path / "g.npz", "--locals", "--max-local", "7", "--local-dim", "16",
                    "--local-pca-from", str(tmp_path / "f.npz")) == 0
    with np.load(tmp_path / "f.npz") as f, np.load(tmp_path / "g.npz") as g:
        np.testing.assert_array_equal(f["local_pca_components"], g["local_pca_components"])
        np.testing.assert_allclose(f["local"], g["local"], atol=1e-5)


def test_labels_from_a_file_and_images_from_a_list(tmp_path, capsys):
    names = make_photos(tmp_path / "photos", odd=False)
    (tmp_path / "photos" / "labels.txt").write_text("# name label\n" + "".join(f"{n},{n[5]}\n" for n in names))
    (tmp_path / "photos" / "list.txt").write_text("\n".join(names[::2]) + "\n")
    assert _extract(tmp_path / "photos" / "list.txt", tmp_path / "f.npz", "--labels",
                    str(tmp_path / "photos" / "labels.txt")) == 0
    with np.load(tmp_path / "f.npz") as z:
        assert list(z["names"]) == names[::2]
        assert [int(z["label_names"][i]) for i in z["labels"]] == [int(n[5]) for n in names[::2]]
    (tmp_path / "photos" / "labels.txt").write_text(f"{names[0]} 0\n")
    assert _extract(tmp_path / "photos", tmp_path / "g.npz", "--labels", str(tmp_path / "photos" / "labels.txt")) == 2
    assert "has no label for" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--images", "{tmp}/nowhere"], "no such folder or list file"),
    (["--images", "{tmp}/empty"], "no image files"),
    (["--out", "{tmp}/f.txt"], "must end in .npz"),
    (["--backbone", "resnet18", "--weights", "{tmp}/missing.pth"], "no such file"),
    (["--labels", "folders", "--images", "{tmp}/flat"], "not inside a class folder"),
    (["--scales", "1,-2"], "--scales"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, words):
    make_photos(tmp_path / "photos", classes=1, per_class=2, odd=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    base = {"--images": str(tmp_path / "photos"), "--out": str(tmp_path / "f.npz"), "--weights": "random",
            "--backbone": "resnet18"}
    given = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for key, value in zip(given[::2], given[1::2]):
        base[key] = value
    argv = ["extract", "--workers", "0"] + [x for kv in base.items() for x in kv]
    if words == "--scales":  # argparse's own error: usage line, then exit 2
        with pytest.raises(SystemExit, match="2"):
            main(argv)
    else:
        assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_nothing_readable_is_an_error(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_text("text")
    assert _extract(tmp_path / "bad", tmp_path / "f.npz") == 2
    assert "none of the 1 files could be read" in capsys.readouterr().err


def _interrupted_run(photos, out, after: int, **kw):
    with pytest.raises(Stop):
        extract_to_file(photos, out, progress=stop_after_calls(after), report=lambda s: None, **kw)


def test_an_interrupted_run_resumes_without_redoing_finished_chunks(tmp_path):
    make_photos(tmp_path / "photos")
    kw = dict(backbone="resnet18", weights="random", size=128, workers=0, dtype="float32", chunk=4, local=True,
              max_local=5, local_dim=8, labels="folders")
    full = tmp_path / "full.npz"
    extract_to_file(tmp_path / "photos", full, report=lambda s: None, **kw)

    out = tmp_path / "part.npz"
    _interrupted_run(tmp_path / "photos", out, after=2, **kw)
    partial = tmp_path / "part.npz.partial"
    assert sorted(p.name for p in partial.glob("chunk_*.npz")) == ["chunk_000000.npz", "chunk_000001.npz"]
    assert not out.exists()
    lines = []
    extract_to_file(tmp_path / "photos", out, report=lines.append, **kw)
    assert any("resuming" in line and "8 of 22 images" in line for line in lines)
    assert not partial.exists()
    with np.load(full) as a, np.load(out) as b:
        assert a.files == b.files
        for key in a.files:
            if a[key].dtype.kind == "f":
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
            else:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_partial_run_with_other_settings_is_not_mixed_in(tmp_path):
    make_photos(tmp_path / "photos", odd=False)
    kw = dict(backbone="resnet18", weights="random", workers=0, dtype="float32", chunk=4)
    _interrupted_run(tmp_path / "photos", tmp_path / "f.npz", after=1, size=128, **kw)
    with pytest.raises(ValueError, match=r"other settings \(size differ\)"):
        extract_to_file(tmp_path / "photos", tmp_path / "f.npz", size=96, report=lambda s: None, **kw)
    # a damaged chunk file is redone, not trusted
    chunk = next((tmp_path / "f.npz.partial").glob("chunk_*.npz"))
    chunk.write_bytes(b"PK\x03\x04 cut short")
    lines = []
    extract_to_file(tmp_path / "photos", tmp_path / "f.npz", size=128, report=lines.append, **kw)
    assert any("redoing chunk_000000.npz" in line for line in lines)
    assert load_retrieval_features(tmp_path / "f.npz").database.shape[0] == 18


def test_extract_resumes_after_a_kill(tmp_path):
    """A real SIGKILL in the middle of a run of the command; the rerun finishes the job and
    equals an uninterrupted run."""
    make_photos(tmp_path / "photos", classes=4, per_class=10, size=(224, 168), odd=False)
    cmd = [sys.executable, "-m", "pycsa.cli", "extract", "--images", str(tmp_path / "photos"), "--backbone",
           "resnet18", "--weights", "random", "--workers", "0", "--dtype", "float32", "--chunk", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    partial = tmp_path / "killed.npz.partial"
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed.npz")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len(list(partial.glob("chunk_*.npz"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.communicate()[0]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(partial.glob("chunk_*.npz")))
    assert 2 <= done_before < 20 and not (tmp_path / "killed.npz").exists()

    again = subprocess.run(cmd + ["--out", str(tmp_path / "killed.npz")], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    m = re.search(r"resuming .*: (\d+) of 40 images already extracted", again.stdout)
    assert m and int(m.group(1)) >= 2 * done_before - 2, again.stdout
    whole = subprocess.run(cmd + ["--out", str(tmp_path / "whole.npz")], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    with np.load(tmp_path / "killed.npz") as a, np.load(tmp_path / "whole.npz") as b:
        assert list(a["names"]) == list(b["names"]) and len(a["names"]) == 40
        np.testing.assert_allclose(a["feats"], b["feats"], rtol=1e-5, atol=1e-6)


def _readme_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"### From a folder of images: four commands\s+```sh\n(.*?)```", text, re.S)
    assert block, "README: the section 'From a folder of images: four commands' and its sh block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_the_readmes_four_commands_run_end_to_end(tmp_path):
    commands = _readme_commands()
    assert [c.split()[:2] for c in commands] == [["pycsa", "extract"], ["pycsa", "eval"], ["pycsa", "train"],
                                                 ["pycsa", "rerank"]]
    make_photos(tmp_path / "photos", classes=4, per_class=8)
    weights = re.search(r"--weights (\S+)", commands[0]).group(1)
    backbone = re.search(r"--backbone (\S+)", commands[0]).group(1)
    torch.manual_seed(1)
    state = BACKBONES[backbone](0.0).state_dict()  # a torchvision-style file: trunk, plus a classifier
    state.update({"fc.weight": torch.randn(1000, 2048) * 0.01, "fc.bias": torch.zeros(1000)})
    torch.save(state, tmp_path / weights)
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        res = subprocess.run([sys.executable, "-m", "pycsa.cli", *argv[1:]], cwd=tmp_path, capture_output=True,
                             text=True, timeout=900)
        assert res.returncode == 0, f"{command}\n{res.stdout}\n{res.stderr}"
        outputs.append(res.stdout)
    assert "wrote feats.npz: 34 of 36 images" in outputs[0]
    assert re.search(r"^gnn\s+\d+\.\d+", outputs[1], re.M) and "cosine" in outputs[1]
    assert "wrote csa.pt" in outputs[2]
    with np.load(tmp_path / "ranking.npz") as z:
        assert z["indices"].shape == (34, 34) and list(z["database_names"])[:1] == ["class0/grey.png"]
        assert (np.sort(z["indices"], axis=1) == np.arange(34)).all()


def test_a_revisited_ground_truth_gives_its_database_and_cropped_queries(tmp_path, capsys):
    import pickle

    from pycsa.extract import GlobalExtractor, build_backbone, load_image

    names = make_photos(tmp_path / "jpg", classes=2, per_class=4, odd=False)
    imlist = [n[:-4] for n in names]  # the official files list names without the extension
    gnd = {"imlist": imlist, "qimlist": [imlist[1], imlist[6]],
           "gnd": [{"easy": [0, 2], "hard": [3], "junk": [], "bbx": [10.0, 5.0, 70.0, 60.0]},
                   {"easy": [4, 5], "hard": [], "junk": [7], "bbx": [0, 0, 40, 40]}]}
    with open(tmp_path / "gnd_toy.pkl", "wb") as f:
        pickle.dump(gnd, f)
    assert _extract(tmp_path / "jpg", tmp_path / "toy.npz", "--gnd", str(tmp_path / "gnd_toy.pkl")) == 0
    assert "10 of 10 images, d=512 (8 database images, 2 query regions)" in capsys.readouterr().out
    with np.load(tmp_path / "toy.npz") as z:
        assert z["database"].shape == (8, 512) and z["queries"].shape == (2, 512)
        assert list(z["names"]) == names and list(z["query_names"]) == [names[1], names[6]]
        trunk, _ = build_backbone("resnet18", "random")
        crop = load_image(tmp_path / "jpg" / names[6], 128, box=[0, 0, 40, 40])
        assert crop.shape == (3, 40, 40)
        expected = GlobalExtractor(trunk, device="cpu", dtype="float32")(crop[None])[0].numpy()
        np.testing.assert_allclose(z["queries"][1], expected, rtol=1e-5, atol=1e-6)
    assert main(["eval", "--features", str(tmp_path / "toy.npz"), "--gnd", str(tmp_path / "gnd_toy.pkl"),
                 "--method", "alpha_qe"]) == 0
    (tmp_path / "jpg" / names[3]).write_bytes(b"broken")
    assert _extract(tmp_path / "jpg", tmp_path / "toy2.npz", "--gnd", str(tmp_path / "gnd_toy.pkl")) == 2
    assert f"cannot be read, and none may be skipped: {names[3]}" in capsys.readouterr().err


def test_folder_labels_need_relative_names(tmp_path, capsys):
    names = make_photos(tmp_path / "photos", classes=2, per_class=2, odd=False)
    (tmp_path / "list.txt").write_text("\n".join(str(tmp_path / "photos" / n) for n in names))
    assert _extract(tmp_path / "list.txt", tmp_path / "f.npz", "--labels", "folders") == 2
    assert "needs image names relative to the image folder" in capsys.readouterr().err


def test_locals_pca_waits_for_a_chunk_with_descriptors(tmp_path):
    root = tmp_path / "photos"
    make_photos(root, classes=2, per_class=3, odd=False)
    (root / "aaa").mkdir()
    for j in range(4):  # the first chunk (sorted names) holds only unreadable files
        (root / "aaa" / f"bad{j}.jpg").write_text("no image")
    extract_to_file(root, tmp_path / "f.npz", backbone="resnet18", weights="random", size=96, workers=0,
                    dtype="float32", chunk=4, local=True, max_local=3, local_dim=8, report=lambda s: None)
    loc = load_local_descriptors(tmp_path / "f.npz")
    assert loc.num_images == 6 and loc.dim == 8 and loc.counts.tolist() == [3] * 6


def test_a_partial_folder_without_its_meta_is_not_trusted(tmp_path):
    make_photos(tmp_path / "photos", classes=1, per_class=3, odd=False)
    partial = tmp_path / "f.npz.partial"
    partial.mkdir()
    np.savez(partial / "chunk_000000.npz", feats=np.zeros((1, 512), np.float32), idx=np.zeros(1, np.int64),
             failed=np.zeros(0, np.int64), failed_why=np.zeros(0, dtype=str))
    extract_to_file(tmp_path / "photos", tmp_path / "f.npz", backbone="resnet18", weights="random", size=96,
                    workers=0, dtype="float32", report=lambda s: None)
    with np.load(tmp_path / "f.npz") as z:
        assert z["feats"].shape == (3, 512) and np.abs(z["feats"]).sum() > 0


def test_resuming_needs_the_same_image_folder(tmp_path):
    for d in ("a", "b"):
        make_photos(tmp_path / d, classes=1, per_class=5, odd=False, seed=ord(d))
    kw = dict(backbone="resnet18", weights="random", size=96, workers=0, dtype="float32", chunk=2)
    with pytest.raises(Stop):
        extract_to_file(tmp_path / "a", tmp_path / "f.npz", progress=stop_after_calls(1), report=lambda s: None, **kw)
    with pytest.raises(ValueError, match=r"other settings \(root differ\)"):
        extract_to_file(tmp_path / "b", tmp_path / "f.npz", report=lambda s: None, **kw)

