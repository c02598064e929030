"""Bad input to image extraction (pycsa.extract and `pycsa extract`): each refused with an
error naming the argument (or the file) before any work or allocation, never a bare torch
error, a silent NaN, or a value quietly changed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pycsa.cli import main
from pycsa.extract import (GeM, GlobalExtractor, RegionalGeM, ReLUPlus, SuperGlobalPooling, build_backbone,
                           extract_to_file, gem, read_labels, regional_gem, scale_gem)
from pycsa.extract.extractor import MAX_PIXELS

Image = pytest.importorskip("PIL.Image")


class Tiny(nn.Module):
    """A trunk of one convolution: 3 -> 4 channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


def tiny(**kw):
    return GlobalExtractor(Tiny(), **{"device": "cpu", "dtype": "float32", **kw})


def photos(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)).save(root / f"img{i}.png")
    return root


def cli_extract(tmp_path, *extra):
    return main(["extract", "--images", str(photos(tmp_path / "im")), "--out", str(tmp_path / "o.npz"),
                 "--backbone", "resnet18", "--weights", "random", "--size", "64", "--workers", "0",
                 "--dtype", "float32", *extra])


# 1. huge allocations
@pytest.mark.parametrize("scales", [(1e3,), (4.01,), (0.0,), (float("inf"),)])
def test_scales_outside_the_bound_are_refused(scales):
    with pytest.raises(ValueError, match=r"^scales: .*\(0, 4\]"):
        tiny(scales=scales)


def test_an_image_over_the_pixel_budget_is_refused_before_resizing():
    side = int((MAX_PIXELS ** 0.5) / 4) + 8  # over the budget at scale 4 only
    images = torch.zeros(1, 3, side, side).expand(1, 3, side, side)  # no memory behind it
    with pytest.raises(ValueError, match="^images: .*budget"):
        tiny(scales=(4.0,))(images)


def test_extract_to_file_bounds_scales_and_size(tmp_path):
    with pytest.raises(ValueError, match="^--scales: "):
        extract_to_file(tmp_path, tmp_path / "o.npz", scales=(1e3,), weights="random")
    with pytest.raises(ValueError, match="^--size: .*budget"):
        extract_to_file(tmp_path, tmp_path / "o.npz", size=100_000, weights="random")
    assert not list(tmp_path.iterdir())  # refused before anything was created


def test_cli_scales_over_the_bound(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_extract(tmp_path, "--scales", "1000")
    assert "--scales: must be a finite number in (0, 4]" in capsys.readouterr().err  # argparse keeps the reason


# 2. silent NaN
def _checkpoint(tmp_path, **projection):
    trunk, _ = build_backbone("resnet18", "random")
    state = {**trunk.state_dict(), **{f"whiten.{k}": v for k, v in projection.items()}}
    path = tmp_path / "w.pth"
    torch.save(state, path)
    return path


def test_weights_with_a_nan_projection_are_refused(tmp_path):
    weight = torch.randn(16, 512)
    weight[3, 5] = float("nan")
    path = _checkpoint(tmp_path, weight=weight)
    with pytest.raises(ValueError, match=r"^--weights: .*w\.pth.*NaN"):
        build_backbone("resnet18", path)


def test_weights_with_a_wrong_length_bias_are_refused(tmp_path):
    path = _checkpoint(tmp_path, weight=torch.randn(16, 512), bias=torch.zeros(15))
    with pytest.raises(ValueError, match=r"^--weights: .*bias.*16"):
        build_backbone("resnet18", path)


def test_nan_images_and_nan_descriptors_are_refused():
    images = torch.randn(2, 3, 40, 48)
    images[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="^images: .*NaN"):
        tiny()(images)
    ex = tiny()
    with torch.no_grad():
        ex.backbone.conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="^backbone: .*weights"):
        ex(torch.randn(2, 3, 40, 48))
    with pytest.raises(ValueError, match="^backbone: "):
        ex.extract(torch.randn(2, 3, 40, 48), max_local=3)


# 3. scales of the wrong kind
@pytest.mark.parametrize("scales, kind", [("12", TypeError), ("0.5", TypeError), ((True,), TypeError),
                                          ((), ValueError), (("1",), TypeError), (None, TypeError)])
def test_scales_must_be_a_sequence_of_numbers(tmp_path, scales, kind):
    with pytest.raises(kind, match="^--scales: "):
        extract_to_file(tmp_path, tmp_path / "o.npz", scales=scales, weights="random")
    with pytest.raises(kind, match="^scales: "):
        tiny(scales=scales)


# 4. pooling parameters
@pytest.mark.parametrize("call, kind, name", [
    (lambda: RegionalGeM(size=3.5), TypeError, "size"),
    (lambda: RegionalGeM(size=4.9), TypeError, "size"),
    (lambda: RegionalGeM(size=4), ValueError, "size"),
    (lambda: SuperGlobalPooling(size=2), ValueError, "size"),
    (lambda: regional_gem(torch.rand(1, 2, 3, 3), size=3.5), TypeError, "size"),
    (lambda: gem(torch.rand(1, 2, 3, 3), eps=float("nan")), ValueError, "eps"),
    (lambda: gem(torch.rand(1, 2, 3, 3), eps=float("inf")), ValueError, "eps"),
    (lambda: GeM(eps=0), ValueError, "eps"),
    (lambda: gem(torch.rand(1, 2, 3, 3), p="3"), TypeError, "p"),
    (lambda: gem(torch.rand(1, 2, 3, 3), p=True), TypeError, "p"),
    (lambda: gem(torch.rand(1, 2, 3, 3), p=None), TypeError, "p"),
    (lambda: GeM(p="abc"), TypeError, "p"),
    (lambda: ReLUPlus(float("nan")), ValueError, "alpha"),
    (lambda: ReLUPlus("0.1"), TypeError, "alpha"),
    (lambda: regional_gem(torch.rand(1, 0, 3, 3)), ValueError, "x"),
    (lambda: scale_gem([np.zeros((2, 3))]), TypeError, "descriptors"),
])
def test_pooling_parameters_are_checked_by_name(call, kind, name):
    with pytest.raises(kind, match=f"^{name}: "):
        call()


# 5. labels files
def test_labels_file_duplicate_with_another_label_is_refused(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a.jpg 1\nb.jpg 2\na.jpg 1\na.jpg 3\n")
    with pytest.raises(ValueError, match=r"^--labels: .*labels\.txt:4: 'a\.jpg'.*line 1"):
        read_labels(str(path), tmp_path, ["a.jpg", "b.jpg"])


def test_labels_file_names_with_spaces_bom_and_encoding(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffmy photo.jpg\tsea\nother one.jpg, hill\nplain.jpg big tree\n".encode("utf-8"))
    ids, names = read_labels(str(path), tmp_path, ["my photo.jpg", "other one.jpg", "plain.jpg"])
    assert list(names[ids]) == ["sea", "hill", "big tree"]
    path.write_bytes(b"a.jpg \xff\xfe\n")
    with pytest.raises(ValueError, match=r"^--labels: .*labels\.txt.*UTF-8"):
        read_labels(str(path), tmp_path, ["a.jpg"])


# 6. --local-dim above the descriptors' dimension
def test_local_dim_above_the_descriptor_dimension_is_refused(tmp_path, capsys):
    assert cli_extract(tmp_path, "--locals", "--local-dim", "100000") != 0
    err = capsys.readouterr().err
    assert "--local-dim" in err and "512" in err
    assert not (tmp_path / "o.npz.partial").exists()


# 7. extractor and extract_to_file arguments
@pytest.mark.parametrize("kw, kind, name", [
    (dict(device="foo"), ValueError, "device"),
    (dict(pooling=None), TypeError, "pooling"),
    (dict(pooling=3), TypeError, "pooling"),
    (dict(projection="whiten"), TypeError, "projection"),
])
def test_extractor_arguments(kw, kind, name):
    with pytest.raises(kind, match=f"^{name}: "):
        tiny(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_named_error():
    with pytest.raises(ValueError, match="^device: "):
        tiny(device="cuda")


@pytest.mark.parametrize("max_local", [None, 2.7, -1, "3"])
def test_extract_max_local_must_be_an_int(max_local):
    with pytest.raises((TypeError, ValueError), match="^max_local: "):
        tiny().extract(torch.randn(1, 3, 20, 20), max_local=max_local)


@pytest.mark.parametrize("kw, name", [(dict(local="no"), "--locals"), (dict(progress=3), "progress"),
                                      (dict(workers=-1), "--workers"), (dict(scale_p=float("nan")), "--scale-p"),
                                      (dict(relu_plus_in_trunk=1), "--relu-plus-in-trunk")])
def test_extract_to_file_arguments(tmp_path, kw, name):
    with pytest.raises((TypeError, ValueError), match=f"^{name}: "):
        extract_to_file(photos(tmp_path / "im"), tmp_path / "o.npz", weights="random", **kw)
    assert not (tmp_path / "o.npz.partial").exists()


def test_random_backbone_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = build_backbone("resnet18", "random")
    assert torch.equal(torch.rand(3), expected)
    b, _ = build_backbone("resnet18", "random")  # and the network is still reproducible
    assert torch.equal(a.state_dict()["conv1.weight"], b.state_dict()["conv1.weight"])


def test_cli_negative_workers_leaves_nothing_behind(tmp_path, capsys):
    assert cli_extract(tmp_path, "--workers", "-1") != 0
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "o.npz.partial").exists()
