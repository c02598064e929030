"""SuperGlobal's pooling modules against their formulas, the trunks' parameter names, and the
multi-scale extractor (pycsa.extract)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pycsa.extract import (GeM, GlobalExtractor, RegionalGeM, ScaleGeM, SuperGlobalPooling, build_backbone, gem,
                           load_backbone_weights, mac, regional_gem, relu_plus, scale_gem, spoc)
from pycsa.extract.backbones import BACKBONES


def _maps(seed=0, shape=(2, 5, 7, 6)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2


def _regional_loop(x: np.ndarray, p: float, size: int) -> np.ndarray:
    """Each position: the power mean of its size x size window of the reflected map."""
    pad = size // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    out = np.empty_like(x)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            window = xp[:, :, i:i + size, j:j + size]
            out[:, :, i, j] = (window ** p).mean(axis=(2, 3)) ** (1 / p)
    return 0.5 * out + 0.5 * x


def test_relu_plus_is_a_floor():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert torch.equal(relu_plus(x), torch.maximum(x, torch.tensor(0.014, dtype=torch.float64)))
    assert torch.equal(relu_plus(x, alpha=0.5), torch.maximum(x, torch.tensor(0.5, dtype=torch.float64)))


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 3, 3, 3), (1, 1, 11, 4)])
def test_regional_gem_equals_the_window_power_mean(shape):
    x = _maps(1, shape)
    got = regional_gem(x, p=2.5, size=5)
    np.testing.assert_allclose(got.numpy(), _regional_loop(x.numpy(), 2.5, 5), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(RegionalGeM(3.0, 3)(x).numpy(), _regional_loop(x.numpy(), 3.0, 3), rtol=1e-6, atol=1e-6)


def test_regional_gem_equals_the_authors_lp_pool_formula():
    # x <- 0.5 * LPPool2d(p, 5, stride 1)(ReflectionPad2d(2)(x / 25^(1/p))) + 0.5 * x
    x, p = _maps(2), 2.5
    lp = nn.LPPool2d(p, 5, stride=1)(nn.ReflectionPad2d(2)(x / (25 ** (1 / p))))
    np.testing.assert_allclose(regional_gem(x, p, 5).numpy(), (0.5 * lp + 0.5 * x).numpy(), rtol=1e-6, atol=1e-6)


def test_regional_gem_on_maps_too_small_to_reflect():
    for h, w in [(1, 1), (2, 1), (2, 2), (1, 6)]:
        x = _maps(3, (1, 4, h, w))
        y = regional_gem(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
    one = torch.full((1, 2, 1, 1), 0.3, dtype=torch.float64)
    torch.testing.assert_close(regional_gem(one), one)  # a constant map is its own power mean


def test_gem_mac_spoc_formulas():
    x = _maps(4)
    for p in (1.0, 3.0, 4.6):
        direct = (x.clamp(min=1e-8) ** p).mean(dim=(2, 3)) ** (1 / p)
        np.testing.assert_allclose(gem(x, p).numpy(), direct.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(GeM()(x).numpy(), ((x ** 4.6).mean(dim=(2, 3)) ** (1 / 4.6)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(mac(x).numpy(), x.numpy().max(axis=(2, 3)))
    np.testing.assert_allclose(spoc(x).numpy(), x.numpy().mean(axis=(2, 3)), rtol=1e-12)
    np.testing.assert_allclose(gem(x, float("inf")).numpy(), mac(x).numpy())
    assert gem(x).shape == (2, 5)


def test_scale_gem_infinity_is_the_max_of_normalised_descriptors():
    g = torch.Generator().manual_seed(5)
    descs = [torch.randn(3, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    expected = np.max([d.numpy() / np.linalg.norm(d.numpy(), axis=1, keepdims=True) for d in descs], axis=0)
    np.testing.assert_allclose(scale_gem(descs).numpy(), expected, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ScaleGeM()(descs).numpy(), expected, rtol=1e-6, atol=1e-12)


def test_scale_gem_power_mean_after_the_shift():
    g = torch.Generator().manual_seed(6)
    descs = [torch.randn(3, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    s = np.stack([d.numpy() for d in descs])
    for b in range(3):
        gamma = s[:, b].min()
        expected = ((s[:, b] - gamma) ** 10).mean(axis=0) ** 0.1 + gamma
        np.testing.assert_allclose(scale_gem(descs, p=10.0)[b].numpy(), expected, rtol=1e-6, atol=1e-9)
    # rows do not interact: the batch's first row alone gives the same
    np.testing.assert_allclose(scale_gem([d[:1] for d in descs], 10.0).numpy(), scale_gem(descs, 10.0)[:1].numpy())


def test_superglobal_pooling_is_the_composition():
    x = _maps(7) - 0.5
    expected = gem(regional_gem(relu_plus(x, 0.014), 2.5, 5), 4.6)
    torch.testing.assert_close(SuperGlobalPooling()(x), expected)


@pytest.mark.parametrize("call, words", [
    (lambda: gem(torch.rand(2, 3)), "B x C x H x W"),
    (lambda: gem(torch.rand(1, 2, 3, 3), p=0), "p: must be a positive"),
    (lambda: gem(torch.rand(1, 2, 3, 3), p=float("nan")), "p: must be a positive"),
    (lambda: regional_gem(torch.rand(1, 2, 3, 3), size=4), "size: must be an odd"),
    (lambda: regional_gem(torch.rand(1, 2, 0, 3)), "empty"),
    (lambda: relu_plus(torch.rand(1, 2, 3, 3), alpha=float("inf")), "alpha"),
    (lambda: scale_gem([]), "at least one scale"),
    (lambda: scale_gem([torch.rand(2, 3), torch.rand(2, 4)]), "one shape"),
    (lambda: gem(np.zeros((1, 2, 3, 3))), "tensor"),
])
def test_pooling_refuses_bad_input_by_name(call, words):
    with pytest.raises((ValueError, TypeError), match=words):
        call()


# torchvision's parameter counts without the classifier: resnet50 25,557,032 - fc 2,049,000;
# resnet18 11,689,512 - 513,000; mobilenet_v2 3,504,872 - 1,281,000
@pytest.mark.parametrize("name, params, keys", [
    ("resnet50", 23_508_032, ["conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
                              "layer4.2.conv3.weight", "layer3.5.bn2.num_batches_tracked"]),
    ("resnet18", 11_176_512, ["layer2.0.downsample.1.weight", "layer4.1.conv2.weight"]),
    ("mobilenet_v2", 2_223_872, ["features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.2.weight",
                                 "features.2.conv.3.running_mean", "features.18.1.weight"]),
])
def test_trunks_have_torchvisions_names_and_sizes(name, params, keys):
    trunk = BACKBONES[name](0.0)
    assert sum(p.numel() for p in trunk.parameters()) == params
    state = trunk.state_dict()
    for key in keys:
        assert key in state, key


def test_trunk_maps_are_downsampled_32x():
    trunk = BACKBONES["resnet18"](0.0).eval()
    with torch.no_grad():
        assert trunk(torch.randn(1, 3, 64, 96)).shape == (1, 512, 2, 3)
        assert BACKBONES["mobilenet_v2"](0.0).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 2, 2)


def test_relu_plus_inside_the_trunk_floors_stages_1_to_3():
    trunk = BACKBONES["resnet18"](0.014).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        h = trunk.maxpool(torch.relu(trunk.bn1(trunk.conv1(x))))
        for layer in (trunk.layer1, trunk.layer2, trunk.layer3):
            h = layer(h)
            assert float(h.min()) >= 0.014 - 1e-7
        assert float(trunk.layer4(h).min()) == 0.0  # the last stage keeps a plain ReLU


def _save_torchvision_like(trunk, path, extra=None, prefix=""):
    state = {prefix + k: v for k, v in trunk.state_dict().items()}
    state[prefix + "fc.weight"], state[prefix + "fc.bias"] = torch.randn(10, trunk.out_channels), torch.zeros(10)
    state.update(extra or {})
    torch.save(state, path)


def test_weights_load_with_prefix_and_classifier_dropped(tmp_path):
    src = BACKBONES["resnet18"](0.0)
    _save_torchvision_like(src, tmp_path / "w.pth", prefix="module.")
    trunk, projection = build_backbone("resnet18", tmp_path / "w.pth")
    assert projection is None and not trunk.training
    for k, v in src.state_dict().items():
        assert torch.equal(trunk.state_dict()[k], v)


def test_weights_with_a_projection(tmp_path):
    src = BACKBONES["resnet18"](0.0)
    W = torch.randn(64, 512)
    _save_torchvision_like(src, tmp_path / "w.pth", extra={"whiten.weight": W, "whiten.bias": torch.ones(64)})
    trunk, projection = build_backbone("resnet18", tmp_path / "w.pth")
    x = torch.randn(2, 512)
    torch.testing.assert_close(projection(x), x @ W.T + 1)


@pytest.mark.parametrize("damage, words", [
    (lambda s: s.pop("layer1.0.conv1.weight"), "parameters missing"),
    (lambda s: s.update({"layer9.weight": torch.zeros(1)}), "not in resnet18"),
    (lambda s: s.update({"conv1.weight": torch.zeros(64, 3, 3, 3)}), r"conv1.weight \(64, 3, 3, 3\)"),
    (lambda s: s["bn1.weight"].fill_(float("nan")), "NaN or inf in bn1.weight"),
])
def test_weights_that_do_not_fit_are_refused_with_the_file_named(tmp_path, damage, words):
    state = BACKBONES["resnet18"](0.0).state_dict()
    damage(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=words) as err:
        load_backbone_weights(BACKBONES["resnet18"](0.0), tmp_path / "bad.pth", "resnet18")
    assert "bad.pth" in str(err.value)


def test_weights_missing_or_holding_objects(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match="pycsa never downloads"):
        build_backbone("resnet18", None)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_backbone("resnet18", tmp_path / "nope.pth")
    torch.save({"conv1.weight": torch.zeros(1), "obj": object.__new__(_Marker)}, tmp_path / "obj.pth")
    with pytest.raises(ValueError, match="obj.pth"):
        build_backbone("resnet18", tmp_path / "obj.pth")
    with pytest.raises(ValueError, match="--backbone: unknown"):
        build_backbone("vgg16", "random")


class _Marker:
    pass


def test_torchvision_cache_is_used_when_present(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    src = BACKBONES["resnet18"](0.0)
    _save_torchvision_like(src, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    trunk, _ = build_backbone("resnet18", None)
    assert torch.equal(trunk.state_dict()["conv1.weight"], src.state_dict()["conv1.weight"])


def _extractor(**kw):
    trunk, _ = build_backbone("resnet18", "random")
    return GlobalExtractor(trunk, device="cpu", dtype="float32", **kw)


def test_extractor_equals_its_steps_written_out():
    ex = _extractor()
    imgs = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        per_scale = []
        for s in (0.7071, 1.0, 1.4142):
            size = (int(70 * s), int(90 * s))
            x = imgs if s == 1.0 else F.interpolate(imgs, size=size, mode="bilinear", align_corners=False,
                                                    antialias=s < 1)
            per_scale.append(F.normalize(SuperGlobalPooling()(ex.backbone(x)), dim=1))
        expected = F.normalize(scale_gem(per_scale), dim=1)
    got = ex(imgs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.norm(dim=1).numpy(), 1.0, rtol=1e-6)


def test_extractor_rows_do_not_depend_on_the_batch():
    ex = _extractor(pooling="gem", scales=(1.0, 0.5), scale_p=10.0)
    imgs = torch.randn(3, 3, 64, 64)
    both = ex(imgs)
    for b in range(3):
        torch.testing.assert_close(ex(imgs[b:b + 1])[0], both[b], rtol=1e-4, atol=1e-5)


def test_extractor_in_bfloat16_stays_close_to_float32():
    trunk, _ = build_backbone("resnet18", "random")
    imgs = torch.randn(2, 3, 64, 80)
    f32 = GlobalExtractor(trunk, device="cpu", dtype="float32")(imgs)
    bf16 = GlobalExtractor(trunk, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    out = bf16(imgs)
    assert out.dtype == torch.float32
    assert float((out * f32).sum(1).min()) > 0.99


def test_local_descriptors_are_the_strongest_positions():
    ex = _extractor(scales=(1.0, 0.5))
    imgs = torch.randn(2, 3, 96, 64)
    glob, loc = ex.extract(imgs, max_local=5)
    torch.testing.assert_close(glob, ex(imgs))
    with torch.no_grad():
        maps = [ex.backbone(imgs), ex.backbone(F.interpolate(imgs, size=(48, 32), mode="bilinear",
                                                             align_corners=False, antialias=True))]
    for b in range(2):
        norms = torch.cat([m[b].flatten(1).norm(dim=0) for m in maps])
        assert loc.descriptors[b].shape == (5, 512)
        np.testing.assert_allclose(loc.descriptors[b].norm(dim=1).numpy(), 1.0, rtol=1e-5)
        best = torch.sort(-norms, stable=True).indices[:5]
        first = maps[0].shape[2] * maps[0].shape[3]
        assert loc.scales[b].tolist() == [int(i >= first) for i in best]
        pos = loc.positions[b]
        assert bool(((pos >= 0) & (pos <= torch.tensor([64.0, 96.0]))).all())
    _, capped = ex.extract(imgs, max_local=10_000)
    assert capped.descriptors[0].shape[0] == 3 * 2 + 2 * 1  # every position of both scales


def test_extractor_refuses_bad_arguments():
    trunk, _ = build_backbone("resnet18", "random")
    with pytest.raises(ValueError, match="scales"):
        GlobalExtractor(trunk, scales=(1.0, -1.0), device="cpu")
    with pytest.raises(ValueError, match="pooling: unknown"):
        GlobalExtractor(trunk, pooling="avg", device="cpu")
    with pytest.raises(TypeError, match="backbone"):
        GlobalExtractor(lambda x: x, device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        GlobalExtractor(trunk, device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="images"):
        GlobalExtractor(trunk, device="cpu", dtype="float32")(torch.randn(1, 1, 32, 32))
    assert math.isinf(GlobalExtractor(trunk, device="cpu").combine.p)


def test_checkpoints_without_num_batches_tracked_load(tmp_path):
    # torchvision's V1 weights were saved before PyTorch 0.4.1 added these buffers
    src = BACKBONES["resnet18"](0.0)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    trunk, _ = build_backbone("resnet18", tmp_path / "old.pth")
    assert torch.equal(trunk.state_dict()["layer1.0.conv1.weight"], src.state_dict()["layer1.0.conv1.weight"])
