"""CNN trunks (image -> last feature map) with torchvision's parameter names, and their weights.

The networks are written here so that extraction needs no torchvision (whose wheels are tied
to one torch build); their ``state_dict`` keys are torchvision's, so a torchvision checkpoint
(``resnet50-*.pth``, ``mobilenet_v2-*.pth``) loads as is. timm's ResNets use the same names.

Weights never come from the network: a file the user gives, or torchvision's own download
cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``) when it has one.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import torch
from torch import nn

from .._checks import optional_path
from .._safe_load import load_weights_only
from .._types import PathLike

__all__ = ["BACKBONES", "build_backbone", "load_backbone_weights", "torchvision_cache_file", "Projection"]


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, w_in: int, width: int, stride: int, floor: float):
        super().__init__()
        w_out = width * self.expansion
        self.conv1 = nn.Conv2d(w_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)  # stride here: torchvision's v1.5
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, w_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(w_out)
        self.downsample = None
        if stride != 1 or w_in != w_out:
            self.downsample = nn.Sequential(nn.Conv2d(w_in, w_out, 1, stride=stride, bias=False), nn.BatchNorm2d(w_out))
        self.floor = floor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = x if self.downsample is None else self.downsample(x)
        return (y + skip).clamp(min=self.floor)


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, w_in: int, width: int, stride: int, floor: float):
        super().__init__()
        self.conv1 = nn.Conv2d(w_in, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = None
        if stride != 1 or w_in != width:
            self.downsample = nn.Sequential(nn.Conv2d(w_in, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
        self.floor = floor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        skip = x if self.downsample is None else self.downsample(x)
        return (y + skip).clamp(min=self.floor)


class ResNetTrunk(nn.Module):
    """ResNet without its pooling and classifier: B x 3 x H x W -> B x C x H/32 x W/32.

    ``relu_plus``: the floor of the residual blocks' output activation in stages 1-3 (0 is a
    plain ReLU). SuperGlobal's trunk uses 0.014 there (ReLU+ inside the network); the last
    stage keeps a plain ReLU either way.
    """

    def __init__(self, block, depths, relu_plus: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        w_in = 64
        for stage, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512)), start=1):
            floor = float(relu_plus) if stage < 4 else 0.0
            blocks = []
            for i in range(depth):
                blocks.append(block(w_in, width, 2 if (i == 0 and stage > 1) else 1, floor))
                w_in = width * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.out_channels = w_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _conv_bn(w_in: int, w_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(w_in, w_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(w_out)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, expand: int):
        super().__init__()
        hidden = w_in * expand
        layers = [] if expand == 1 else [_conv_bn(w_in, hidden, 1)]
        # flat indices as torchvision's: conv.{0[,1]} conv-bn-relu6 groups, then the linear 1x1 and its bn
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, w_out, 1, bias=False),
                   nn.BatchNorm2d(w_out)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and w_in == w_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Trunk(nn.Module):
    """MobileNetV2 (width 1.0) without its classifier: B x 3 x H x W -> B x 1280 x H/32 x W/32."""

    _SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self):
        super().__init__()
        layers = [_conv_bn(3, 32, 3, 2)]
        w_in = 32
        for expand, w_out, n, stride in self._SETTINGS:
            for i in range(n):
                layers.append(_InvertedResidual(w_in, w_out, stride if i == 0 else 1, expand))
                w_in = w_out
        layers.append(_conv_bn(w_in, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.out_channels = 1280

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


BACKBONES = {
    "resnet18": lambda rp: ResNetTrunk(_Basic, (2, 2, 2, 2), rp),
    "resnet34": lambda rp: ResNetTrunk(_Basic, (3, 4, 6, 3), rp),
    "resnet50": lambda rp: ResNetTrunk(_Bottleneck, (3, 4, 6, 3), rp),
    "resnet101": lambda rp: ResNetTrunk(_Bottleneck, (3, 4, 23, 3), rp),
    "resnet152": lambda rp: ResNetTrunk(_Bottleneck, (3, 8, 36, 3), rp),
    "mobilenet_v2": lambda rp: MobileNetV2Trunk(),
}

# a classifier is not part of the trunk; a projection (whitening) after pooling is kept
_CLASSIFIER_PREFIXES = ("fc.", "classifier.")
_PROJECTION_PREFIXES = ("whiten.", "head.fc.", "projection.")


class Projection(nn.Module):
    """The checkpoint's projection of pooled descriptors (D x C weight, optional bias)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            if bias is not None:
                self.linear.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def torchvision_cache_file(name: str) -> Path | None:
    """torchvision's cached checkpoint for ``name`` (e.g. resnet50-11ad3fa6.pth), or None."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                        "torch")
    found = sorted(glob.glob(os.path.join(home, "hub", "checkpoints", f"{name}-*.pth")))
    return Path(found[-1]) if found else None


def _state_dict(obj, path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"--weights: {path} does not hold a state dict (a dict of tensors, "
                         "or one under 'state_dict' / 'model')")
    out = {}
    for key, value in obj.items():
        for prefix in ("module.", "encoder_q.", "backbone.", "body."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_backbone_weights(trunk: nn.Module, path: PathLike, name: str = "backbone") -> Projection | None:
    """Loads a torchvision/timm-style state dict into ``trunk``; returns the checkpoint's
    projection (keys ``whiten.*``, ``head.fc.*`` or ``projection.*``) or None. The classifier
    (``fc.*``, ``classifier.*``) is dropped. Every trunk parameter must be in the file, with
    its shape; errors name the file and the first keys that do not fit."""
    state = _state_dict(load_weights_only(path, "--weights", f"a {name} state dict"), path)
    proj = {k.split(".")[-1]: v for k, v in state.items() if k.startswith(_PROJECTION_PREFIXES)}
    trunk_state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES + _PROJECTION_PREFIXES)}
    expected = trunk.state_dict()
    for k in expected:  # checkpoints saved before PyTorch 0.4.1 (torchvision's V1 weights) lack these
        if k.endswith("num_batches_tracked") and k not in trunk_state:
            trunk_state[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in trunk_state]
    unexpected = [k for k in trunk_state if k not in expected]
    if missing or unexpected:
        what = []
        if missing:
            what.append(f"{len(missing)} {name} parameters missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            what.append(f"{len(unexpected)} keys not in {name} (e.g. {', '.join(unexpected[:3])})")
        raise ValueError(f"--weights: {path} does not fit {name}: {'; '.join(what)}. Expected torchvision's "
                         f"parameter names (as in torchvision.models.{name}().state_dict())")
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in trunk_state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"--weights: {path} does not fit {name}: {', '.join(wrong[:3])}")
    bad = [k for k, v in trunk_state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"--weights: {path} holds NaN or inf in {', '.join(bad[:3])}")
    trunk.load_state_dict(trunk_state)
    if not proj:
        return None
    weight, bias = proj.get("weight"), proj.get("bias")
    if weight is None or weight.dim() != 2 or weight.shape[1] != trunk.out_channels:
        raise ValueError(f"--weights: {path}: the projection weight must be D x {trunk.out_channels}, "
                         f"got {None if weight is None else tuple(weight.shape)}")
    # a wrong-length bias would fail in nn.Linear's copy with a bare RuntimeError
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"--weights: {path}: the projection bias must have {weight.shape[0]} values (one per row "
                         f"of its weight), got shape {tuple(bias.shape)}")
    # the trunk's keys are checked above; a NaN here would make every descriptor NaN
    bad = [k for k, v in (("weight", weight), ("bias", bias))
           if v is not None and (not v.is_floating_point() or not bool(torch.isfinite(v.float()).all()))]
    if bad:
        raise ValueError(f"--weights: {path}: the projection's {' and '.join(bad)} hold NaN or inf "
                         "(or are not floating point)")
    return Projection(weight.float(), None if bias is None else bias.float())


def build_backbone(name: str, weights: PathLike | None = None,
                   relu_plus: float = 0.0) -> tuple[nn.Module, Projection | None]:
    """(trunk in eval mode, projection or None). ``weights``: a state dict file, 'cache'
    (torchvision's download cache; an error when it has none), or 'random' (random
    initialisation: for trying the pipeline only, the descriptors mean nothing)."""
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(f"--backbone: unknown {name!r}; choose from {', '.join(BACKBONES)}")
    optional_path(weights, "--weights")  # os.fspath would fail on anything else with no name
    # built once, seeded with 0 in a forked CPU RNG: 'random' weights are reproducible, and the
    # caller's random state is the same after this call as before it (loaded weights replace these)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trunk = BACKBONES[name](relu_plus)
    projection = None
    if weights is None or weights == "cache":
        cached = torchvision_cache_file(name)
        if cached is None:
            raise ValueError(f"--weights: no file given and torchvision's cache has no {name} checkpoint "
                             "(pycsa never downloads): pass a torchvision or timm state dict file, "
                             "or 'random' to try the pipeline with an untrained network")
        weights = cached
    if weights != "random":
        path = Path(os.fspath(weights))
        if not path.is_file():
            raise FileNotFoundError(f"--weights: no such file: {path} (a torchvision or timm state dict of {name}, "
                                    "e.g. torchvision's resnet50-11ad3fa6.pth; or 'random' to try the pipeline "
                                    "with an untrained network)")
        projection = load_backbone_weights(trunk, path, name)
    trunk.eval()
    if projection is not None:
        projection.eval()
    return trunk, projection
