"""Reranking Transformers (RRT, SPEC §8): a pairwise model over one global and many local
descriptors per image.

Each (query, candidate) pair is one sequence ``[CLS, g_q, l_q…, SEP, g_d, l_d…]``: the
global descriptors projected to the local dimension, a scale embedding added to each
local descriptor, a segment embedding to every token (six kinds), no positional
embedding. The valid tokens are packed at the front and the rest is padding that
:func:`pycsa.ops.attention` skips through ``lengths``, so pairs with fewer local
descriptors cost less. Post-norm encoder layers; ``Linear(d→1)`` on CLS gives the logit.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import finite_float, transformer_sizes
from ...ops import attention

# Bounds on a configuration, generous (the paper's model is d=128, 6 layers, 4 heads, FFN
# 1024) and checked before any layer is built: a damaged checkpoint asking for 20,000 layers
# is refused at once, and every model that can be trained can be loaded again.
LIMITS = {"global_dim": 65536, "dim": 16384, "depth": 64, "heads": 1024, "ffn": 65536, "num_scales": 1024}

# segment ids of the six token kinds
CLS, Q_GLOBAL, Q_LOCAL, SEP, D_GLOBAL, D_LOCAL = range(6)


class PostNormLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim: {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, lengths):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = attention(q, k, v, lengths).transpose(1, 2).reshape(B, T, C)
        x = self.norm1(x + self.drop(self.proj(a)))
        return self.norm2(x + self.drop(self.fc2(self.drop(F.relu(self.fc1(x))))))


class RRT(nn.Module):
    """RRT with the paper's defaults: d=128, 6 layers, 4 heads, FFN 1024 (``global_skip``
    None; a value adds the global cosine to the logit, scaled by a learned factor that
    starts there).

    ``forward(gq, lq, sq, nq, gd, ld, sd, nd)``: per pair p, the query's global
    descriptor gq[p] (G), its local descriptors lq[p] (C x d, the first nq[p] valid)
    with scale indices sq[p], and the same for the candidate; returns P logits.
    """

    def __init__(self, global_dim: int = 2048, dim: int = 128, depth: int = 6, heads: int = 4, ffn: int = 1024,
                 num_scales: int = 7, dropout: float = 0.1, global_skip: float | None = None):
        super().__init__()
        self.config = self.check_config(dict(global_dim=global_dim, dim=dim, depth=depth, heads=heads, ffn=ffn,
                                             num_scales=num_scales, dropout=dropout, global_skip=global_skip))
        global_dim, dim, depth, heads, ffn, num_scales, dropout, global_skip = self.config.values()
        # Optional skip from the global ranking: logit += s·cos(g_q, g_d), s learned (as
        # log s, so AdamW's steps are relative) from its initial value. The pair model then
        # refines the global similarity instead of replacing it (bench/results: rrt-mpeg7).
        self.log_global_scale = nn.Parameter(torch.tensor(math.log(global_skip))) if global_skip else None
        self.global_proj = nn.Linear(global_dim, dim)
        self.scale_embed = nn.Embedding(num_scales, dim)
        self.segment_embed = nn.Embedding(6, dim)
        self.layers = nn.ModuleList(PostNormLayer(dim, heads, ffn, dropout) for _ in range(depth))
        self.head = nn.Linear(dim, 1)
        self.apply(_init)

    @staticmethod
    def check_config(config: dict) -> dict:
        """The configuration with plain Python values (what a checkpoint can store), or
        ValueError/TypeError naming the first entry outside :data:`LIMITS` or of a wrong type."""
        out = transformer_sizes(config, LIMITS)
        skip = config["global_skip"]
        return out | {"dropout": finite_float(config["dropout"], "dropout", 0.0, 1.0),
                      "global_skip": None if skip is None else finite_float(skip, "global_skip", 0.0, low_open=True)}

    @torch.no_grad()
    def init_matching(self, beta: float) -> "RRT":
        """Starts the first layer as a soft matcher between the two images' descriptors.

        W_q = W_k = c·I with c² = beta·sqrt(head dim): a token's attention logit to another
        is beta times their dot product (unit descriptors: beta·cosine, within each head's
        slice of the coordinates). W_v = W_o = I and segment embeddings of norm 1/2 (random
        directions): what a token gathers then carries, in its segment part, how much of
        its attention landed on the other image, i.e. a soft count of its matches, the
        signal geometric verification uses. Trained from the plain initialisation, the
        model has to find this bilinear form in the data, which 700 training images do
        not give it (bench/results: rrt-mpeg7). Biases of q, k, v and the output are zeroed.
        """
        dim = self.config["dim"]
        c = (float(beta) * (dim // self.config["heads"]) ** 0.5) ** 0.5
        first = self.layers[0]
        eye = torch.eye(dim, dtype=first.qkv.weight.dtype, device=first.qkv.weight.device)
        first.qkv.weight.copy_(torch.cat([c * eye, c * eye, eye]))
        first.qkv.bias.zero_()
        first.proj.weight.copy_(eye)
        first.proj.bias.zero_()
        seg = torch.randn_like(self.segment_embed.weight)
        self.segment_embed.weight.copy_(0.5 * seg / seg.norm(dim=1, keepdim=True))
        return self

    def forward(self, gq: torch.Tensor, lq: torch.Tensor, sq: torch.Tensor, nq: torch.Tensor, gd: torch.Tensor,
                ld: torch.Tensor, sd: torch.Tensor, nd: torch.Tensor) -> torch.Tensor:
        P, dim = gq.shape[0], self.config["dim"]
        if lq.shape[-1] != dim or ld.shape[-1] != dim:
            raise ValueError(f"local descriptors: expected dimension {dim} (this model's), got "
                             f"{lq.shape[-1]} and {ld.shape[-1]}")
        if gq.shape[-1] != self.config["global_dim"]:
            raise ValueError(f"global descriptors: expected dimension {self.config['global_dim']}, got {gq.shape[-1]}")
        num_scales = self.config["num_scales"]
        for name, s in (("query scales", sq), ("candidate scales", sd)):
            if s.numel() and int(s.max()) >= num_scales:
                raise ValueError(f"{name}: index {int(s.max())} but the model has {num_scales} scales")
        device = gq.device
        nq, nd = nq.to(device), nd.to(device)
        lengths = 4 + nq + nd
        T = int(lengths.max()) if P else 4
        t = torch.arange(T, device=device).unsqueeze(0)
        seg = torch.full((P, T), CLS, dtype=torch.long, device=device)
        q_loc = (t >= 2) & (t < 2 + nq.unsqueeze(1))
        d_loc = (t >= 4 + nq.unsqueeze(1)) & (t < lengths.unsqueeze(1))
        seg[:, 1] = Q_GLOBAL
        seg[q_loc] = Q_LOCAL
        seg.scatter_(1, (2 + nq).unsqueeze(1), SEP)
        seg.scatter_(1, (3 + nq).unsqueeze(1), D_GLOBAL)
        seg[d_loc] = D_LOCAL

        dtype = self.global_proj.weight.dtype
        x = torch.zeros(P, T, dim, dtype=dtype, device=device)
        x[:, 1] = self.global_proj(gq.to(dtype))
        x.scatter_(1, (3 + nq).view(P, 1, 1).expand(P, 1, dim), self.global_proj(gd.to(dtype)).unsqueeze(1))
        cq = torch.arange(lq.shape[1], device=device) < nq.unsqueeze(1)
        cd = torch.arange(ld.shape[1], device=device) < nd.unsqueeze(1)
        # boolean selections run in (pair, position) order on both sides
        x[q_loc] = (lq.to(dtype) + self.scale_embed(sq.to(device)))[cq]
        x[d_loc] = (ld.to(dtype) + self.scale_embed(sd.to(device)))[cd]
        x = x + self.segment_embed(seg)
        for layer in self.layers:
            x = layer(x, lengths)
        # the head in float32: bfloat16 logits (8 significant bits) would tie many candidates
        logit = F.linear(x[:, 0].float(), self.head.weight.float(), self.head.bias.float()).squeeze(-1)
        if self.log_global_scale is not None:
            cos = F.cosine_similarity(gq.float(), gd.float(), dim=-1)
            logit = logit + self.log_global_scale.float().exp() * cos
        return logit


def _init(m: nn.Module) -> None:
    # Small embeddings: unit-norm local descriptors must not drown under N(0, 1)
    # scale and segment vectors (norm ~11 at d=128).
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
