"""The CSA network (SPEC §2): affinity features refined by a small transformer.

Input: per ranking list, the K x L affinity matrix (item i against the list's top-L
anchors; the query is item 1). ``Linear(L→D)``, then ``depth`` pre-norm encoder blocks
(LN → multi-head self-attention → residual; LN → MLP(D→4D, GELU, →D) → residual), no
positional embedding, so K may differ between training and serving. The new score
of item i is cos(y_1, y_i). Attention runs on :func:`pycsa.ops.attention`, whose
``lengths`` let one batch hold lists of different K without work on the padding.

Two options that are not in the paper (issue #18), both off by default and stored in the
configuration: ``standardize`` divides each list's affinities by their mean and spread over
its anchor rows (the first L items, so the statistics do not depend on K), which makes the
input scale-free across feature extractors; ``residual`` makes the new score a learned
correction of the input ranking's, z(s_in) + g·z(cos(y_1, y_i)) with z the standardisation
over the list and g a learned scalar that starts at 0, so that a model begins at the input
order and moves from it only as far as training supports.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import boolean, finite_float, integer, transformer_sizes
from ...ops import attention
from .stage import check_stage

# Bounds on a configuration, generous for a re-ranker (the paper's is L=512, D=768, 2 layers,
# 12 heads) and checked before any layer is built: a damaged checkpoint asking for 20,000
# layers is refused at once instead of after a minute of allocation, and every model that
# can be trained can be loaded again.
LIMITS = {"num_anchors": 65536, "dim": 16384, "depth": 64, "heads": 1024}


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x, sample: torch.Tensor | None = None, samples: int | None = None):
        """``x`` is samples x ...; or, with ``sample`` (each row's sample, of ``samples``), the
        packed tokens of a ragged batch, whose rows are dropped a whole sample at a time."""
        if not self.training or self.p == 0.0:
            return x
        n = x.shape[0] if sample is None else samples
        keep = torch.empty((n,) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * (keep if sample is None else keep[sample]) / (1 - self.p)


class Block(nn.Module):
    """Pre-norm encoder block. Dropout acts on the projections (the fused attention has no
    dropout on its weights)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.1, drop_path: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim: {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.drop = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, *,
                packed: tuple[torch.Tensor, int, int] | None = None) -> torch.Tensor:
        """x: B x T x C, or with ``packed = (positions, B, T)`` (the flat positions of the
        valid tokens in a B x T batch, see :func:`valid_positions`) the N x C valid tokens
        alone: every per-token layer then skips the padding; only attention sees the batch."""
        if packed is None:
            B, T, C = x.shape
            qkv = self.qkv(self.norm1(x))
        else:
            (positions, B, T), C = packed, x.shape[-1]
            qkv = x.new_zeros(B * T, 3 * C).index_copy_(0, positions, self.qkv(self.norm1(x)))
        # (B, T, 3, H, Dh) viewed as three (B, H, T, Dh): the kernel reads the strides, no copy
        q, k, v = qkv.view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = attention(q, k, v, lengths).transpose(1, 2).reshape(B * T, C)
        a = a if packed is None else a.index_select(0, packed[0])
        # stochastic depth drops whole lists, packed or not
        by_list = {} if packed is None else {"sample": packed[0] // T, "samples": B}
        x = x + self.drop_path(self.drop(self.proj(a.view_as(x))), **by_list)
        h = self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x)))))
        return x + self.drop_path(self.drop(h), **by_list)


def valid_positions(lengths: torch.Tensor, T: int) -> torch.Tensor | None:
    """Flat positions (b·T + t, t < lengths[b]) of the valid tokens of a B x T batch, or
    None when every sequence is full (then there is nothing to skip)."""
    if lengths is None or bool((lengths >= T).all()):
        return None
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]).reshape(-1).nonzero().squeeze(1)


class CSA(nn.Module):
    """Contextual similarity aggregation (SPEC §2). Defaults are the paper's.

    ``forward(affinity, lengths=None)`` maps B x K x L affinity features to refined
    features B x K x D; :meth:`scores` turns them into cos(y_1, y_i). ``reconstruct``
    is the 2-layer MLP of the MSE loss (D → D → L), used only in training.
    """

    def __init__(self, num_anchors: int = 512, dim: int = 768, depth: int = 2, heads: int = 12,
                 dropout: float = 0.1, drop_path: float = 0.1, residual: bool = False, standardize: bool = False,
                 stage: str | None = None, stage_params: dict | None = None, stage_depth: int | None = None):
        super().__init__()
        self.config = self.check_config(dict(num_anchors=num_anchors, dim=dim, depth=depth, heads=heads,
                                             dropout=dropout, drop_path=drop_path, residual=residual,
                                             standardize=standardize, stage=stage, stage_params=stage_params,
                                             stage_depth=stage_depth))
        c = self.config
        num_anchors, dim, depth, heads, dropout, drop_path = (c[k] for k in ("num_anchors", "dim", "depth", "heads",
                                                                             "dropout", "drop_path"))
        self.num_anchors = num_anchors
        self.residual, self.standardize = c["residual"], c["standardize"]
        # the re-ranker whose lists and scores the model was trained on (None: the features'
        # inner products): its affinities come from that stage's scores (see stage.py)
        self.stage, self.stage_params, self.stage_depth = c["stage"], c["stage_params"], c["stage_depth"]
        # the weight of CSA's own score in a residual model; 0: the input order at the start
        self.gate = nn.Parameter(torch.zeros(())) if self.residual else None
        self.embed = nn.Linear(num_anchors, dim)
        # stochastic depth grows linearly with depth, as in the ViT recipes the authors follow
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(dim, heads, 4, dropout, r) for r in rates)
        self.reconstruct = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_anchors))
        self.apply(_init)

    @staticmethod
    def check_config(config: dict) -> dict:
        """The configuration with plain Python values (what a checkpoint can store), or
        ValueError/TypeError naming the first entry outside :data:`LIMITS` or of a wrong type."""
        out = transformer_sizes(config, LIMITS)
        out |= {name: finite_float(config[name], name, 0.0, 1.0) for name in ("dropout", "drop_path")}
        # absent from checkpoints written before these options existed: off
        out |= {name: boolean(config.get(name, False), name) for name in ("residual", "standardize")}
        stage, params, depth = config.get("stage"), config.get("stage_params"), config.get("stage_depth")
        if stage is None:
            if params or depth is not None:
                raise ValueError("stage_params, stage_depth: given without a stage")
            return out | {"stage": None, "stage_params": {}, "stage_depth": None}
        stage, params = check_stage(stage, params)
        for key, v in params.items():
            if not isinstance(key, str) or not (v is None or isinstance(v, (bool, int, float, str))):
                raise TypeError(f"stage_params: {key!r}: expected plain values (a checkpoint stores them), got {v!r}")
        depth = integer(depth, "stage_depth", low=1) if depth is not None else out["num_anchors"]
        return out | {"stage": stage, "stage_params": params, "stage_depth": depth}

    def forward(self, affinity: torch.Tensor, lengths: torch.Tensor | None = None, *,
                reconstruct: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Refined features B x K x D; with ``reconstruct`` also the MSE head's B x K x L output
        (inside forward, so that DistributedDataParallel sees every parameter used)."""
        if affinity.dim() != 3 or affinity.shape[-1] != self.num_anchors:
            raise ValueError(f"affinity: expected B x K x {self.num_anchors} (this model's num_anchors), "
                             f"got {tuple(affinity.shape)}")
        B, T, L = affinity.shape
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=affinity.device)
            if lengths.shape != (B,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
                raise ValueError(f"lengths: expected {B} integer lengths (one per list), got "
                                 f"{lengths.dtype} of shape {tuple(lengths.shape)}")
        if self.standardize:
            affinity = standardized_affinity(affinity, self.num_anchors, lengths)
        positions = valid_positions(lengths, T)
        if positions is None:
            x = self.embed(affinity.to(self.embed.weight.dtype))
            for block in self.blocks:
                x = block(x, lengths)
        else:
            # A ragged batch runs its per-token layers (most of the work) on its valid
            # tokens only; rows past a list's length come out as zeros.
            x = self.embed(affinity.reshape(B * T, L).index_select(0, positions).to(self.embed.weight.dtype))
            for block in self.blocks:
                x = block(x, lengths, packed=(positions, B, T))
            x = x.new_zeros(B * T, x.shape[-1]).index_copy_(0, positions, x).view(B, T, -1)
        return (x, self.reconstruct(x)) if reconstruct else x

    @staticmethod
    def scores(y: torch.Tensor) -> torch.Tensor:
        """cos(y_1, y_i) for every item i of each list: B x K, in float32."""
        y = F.normalize(y.float(), dim=-1)
        return torch.einsum("bd,bkd->bk", y[:, 0], y)

    def rescore(self, y: torch.Tensor, input_scores: torch.Tensor | None = None) -> torch.Tensor:
        """The new scores of items 2..K (B x (K - 1), float32) from refined features ``y``:
        cos(y_1, y_i), or for a residual model z(input_scores) + g·z(cos(y_1, y_i)), where
        ``input_scores`` (B x (K - 1)) are the input ranking's scores of the same items."""
        c = CSA.scores(y)[:, 1:]
        if not self.residual:
            return c
        if input_scores is None:
            raise ValueError("input_scores: a residual CSA model re-scores the input ranking's scores; "
                             "pass the ranking's scores (a Ranking, not bare indices)")
        if input_scores.shape != c.shape:
            raise ValueError(f"input_scores: expected shape {tuple(c.shape)} (one per candidate), "
                             f"got {tuple(input_scores.shape)}")
        return _z(input_scores.float()) + self.gate.float() * _z(c)


def _z(s: torch.Tensor) -> torch.Tensor:
    """Each row standardised (mean 0, spread 1); a constant row becomes 0."""
    s = s - s.mean(dim=1, keepdim=True)
    # clamped before the square root: sqrt's gradient at 0 is inf, and inf x 0 (from a clamp
    # after it) is NaN, which a constant list in training would spread into every weight
    return s / s.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-12).sqrt()


def standardized_affinity(A: torch.Tensor, num_anchors: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Each list's affinities minus their mean, over their spread, both taken over the anchor
    rows (the first L items: the same for any K >= L, so a list served at K = 1,024 is scaled
    as it was in training at K = 128; for K < L, over the K rows there are); with ``lengths``,
    over the valid ones only."""
    top = A[:, :num_anchors].float()
    if lengths is None:
        mean = top.mean(dim=(1, 2), keepdim=True)
        spread = (top - mean).pow(2).mean(dim=(1, 2), keepdim=True).clamp_min(1e-12).sqrt()
    else:  # padding (possibly NaN) takes no part
        valid = (torch.arange(top.shape[1], device=A.device)[None, :] < lengths[:, None])[:, :, None]
        count = (valid.sum(dim=1, keepdim=True) * top.shape[2]).clamp_min(1)
        top = torch.where(valid, top, 0.0)
        mean = top.sum(dim=(1, 2), keepdim=True) / count
        spread = (torch.where(valid, top - mean, 0.0).pow(2).sum(dim=(1, 2), keepdim=True) / count).clamp_min(1e-12).sqrt()
    return ((A.float() - mean) / spread.clamp_min(1e-6)).to(A.dtype)  # spread: see _z


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
