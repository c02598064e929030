"""Training RRT (SPEC §8): triplets from each anchor's top-k by global similarity (one
positive, one negative), binary cross-entropy on the pair logits, AdamW.

Three additions make it generalise from small training sets (MPEG-7: 700 images of 35
classes; see bench/results): the first layer starts attending by descriptor similarity
(:meth:`RRT.init_matching`); each training pair sees its descriptors under a random
signed permutation of the coordinates (one for the two images' local descriptors, one
for their global ones), so dot products within the pair are unchanged but a
coordinate's value no longer identifies a training class, and the model has to learn
how the two images relate instead of which classes they are; and the logit gets a
learned multiple of the global cosine (``global_skip``), so the transformer refines the
global ranking instead of having to rebuild it. ``match_init=None, augment=False,
global_skip=None`` trains as the paper does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..._checks import boolean, finite_float, integer, optional_callable, optional_int, optional_path, positive_int
from ..._tensors import as_device, as_tensor, check_features, class_labels
from ..._types import ArrayLike, Device, PathLike
from ...datasets.local import LocalDescriptors
from ...ranking import Progress
from ...search import neighbours_without_self
from ..checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, writing
from ..validation import resorted_class_map
from .model import RRT

FORMAT = "pycsa.rrt"


@dataclass
class TrainResult:
    model: RRT
    history: list = field(default_factory=list)


def pair_inputs(G: torch.Tensor, local: LocalDescriptors, qi: torch.Tensor, di: torch.Tensor,
                max_local: int | None = None, Gq: torch.Tensor | None = None, local_q: LocalDescriptors | None = None):
    """The model's inputs (gq, lq, sq, nq, gd, ld, sd, nd) for the pairs (qi[p], di[p]),
    descriptors on G's device; queries from (Gq, local_q) when given, else the database."""
    max_local = optional_int(max_local, "max_local", low=1)  # where training and serving both pass
    Gq = G if Gq is None else Gq
    local_q = local if local_q is None else local_q
    dev = G.device
    lq, sq, nq = local_q.padded(qi, max_local)
    ld, sd, nd = local.padded(di, max_local)
    return Gq[qi.to(dev)], lq.to(dev), sq, nq, G[di.to(dev)], ld.to(dev), sd, nd


def pair_logits(model: RRT, G: torch.Tensor, local: LocalDescriptors, qi: torch.Tensor, di: torch.Tensor,
                max_local: int | None = None, Gq: torch.Tensor | None = None,
                local_q: LocalDescriptors | None = None) -> torch.Tensor:
    """Logits of the pairs (qi[p], di[p]); queries from (Gq, local_q) when given, else the database."""
    return model(*pair_inputs(G, local, qi, di, max_local, Gq, local_q))


@torch.no_grad()
def rerank_scores(model: RRT, G: torch.Tensor, local: LocalDescriptors, top: torch.Tensor, *,
                  Gq: torch.Tensor | None = None, local_q: LocalDescriptors | None = None, batch_pairs: int = 256,
                  max_local: int | None = None, progress: Progress = None) -> torch.Tensor:
    """Logit of every (query b, candidate top[b, j]) pair: B x k, in batches of pairs."""
    B, k = top.shape
    qi = torch.arange(B).repeat_interleave(k)
    di = top.reshape(-1).cpu()
    # Pairs of similar length share a batch: the linear layers run over each batch's
    # longest sequence, so sorting by length cuts their work on padding.
    lq = (local if local_q is None else local_q).counts[qi]
    order = torch.sort(lq + local.counts[di], stable=True).indices
    out = torch.empty(B * k)
    for s in range(0, B * k, batch_pairs):
        sel = order[s:s + batch_pairs]
        out[sel] = pair_logits(model, G, local, qi[sel], di[sel], max_local, Gq, local_q).float().cpu()
        if progress is not None:
            progress(min(s + batch_pairs, B * k) // k, B)
    return out.view(B, k)


@torch.no_grad()
def validation_map(model: RRT, G: torch.Tensor, local: LocalDescriptors, labels: ArrayLike, topk: int = 100,
                   max_local: int | None = None, batch_pairs: int = 256) -> float:
    """Class mAP, every image a query against the others, its top-k re-sorted by RRT."""
    full = neighbours_without_self(G, G.shape[0] - 1)
    was = model.training
    model.eval()
    try:
        s = rerank_scores(model, G, local, full[:, :topk].cpu(), batch_pairs=batch_pairs, max_local=max_local)
    finally:
        model.train(was)
    return resorted_class_map(full, s, labels)


def _signed_permutations(P: int, dim: int, gen: torch.Generator):
    return (torch.rand(P, dim, generator=gen).argsort(1),
            torch.randint(0, 2, (P, dim), generator=gen).float() * 2 - 1)


def _permute(x: torch.Tensor, perm: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """x (P x ... x dim) with each pair's coordinates permuted and sign-flipped."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    perm, sign = perm.to(x.device).view(shape), sign.to(x.device, x.dtype).view(shape)
    return x.gather(-1, perm.expand_as(x)) * sign


def _global(features, local, name: str, local_name: str) -> torch.Tensor:
    """Global features as float32 on their device, checked against their local descriptors."""
    if not isinstance(local, LocalDescriptors):
        raise TypeError(f"{local_name}: expected LocalDescriptors (pycsa.datasets.load_local_descriptors), "
                        f"got {type(local).__name__}")
    G = as_tensor(features, name)[0]
    check_features(G, name, allow_empty=False)
    if G.shape[0] != local.num_images:
        raise ValueError(f"{name}: {G.shape[0]} images but {local_name} describes {local.num_images}")
    return G.float()


def train(global_features: ArrayLike, local: LocalDescriptors, labels: ArrayLike, *,
          val: tuple | None = None, topk: int = 100, dim: int = 128,
          depth: int = 6, heads: int = 4, ffn: int = 1024, dropout: float = 0.1, epochs: int = 10,
          batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 5e-4, max_local: int | None = 500,
          triplets_per_anchor: int = 1, match_init: float | None = 5.0, augment: bool = True,
          global_skip: float | None = 20.0, val_topk: int | None = None, device: Device = None,
          checkpoint: PathLike | None = None, resume: PathLike | None = None, seed: int = 0,
          progress: Progress = None, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Trains RRT on labelled images with global features (N x G) and local descriptors.

    Each epoch every anchor whose global top-``topk`` (itself left out) holds a positive
    and a negative gives ``triplets_per_anchor`` triplets, each two pairs: (anchor, a
    random positive, 1) and (anchor, a random negative, 0); ``batch_size`` triplets per
    step, AdamW with a linear warm-up over the first 5% of the steps (at most 50).
    ``match_init`` (beta of :meth:`RRT.init_matching`; None: the plain initialisation),
    ``augment`` (random signed permutations per pair) and ``global_skip`` (the global
    cosine's initial weight in the logit; None: none) are described in the module
    docstring. ``val=(global, local, labels)`` adds the validation mAP (each image's
    top-``val_topk``, default ``topk``, re-ranked) after each epoch. ``checkpoint`` is
    written after every epoch (model, optimiser, history, every random generator's state);
    ``resume``: such a file to continue from, which gives the same model as a run that was
    never interrupted. Negative labels are distractors (never positive).
    """
    # every argument checked before any work (a bad one would otherwise surface mid-epoch)
    for name, v in (("topk", topk), ("epochs", epochs), ("batch_size", batch_size),
                    ("triplets_per_anchor", triplets_per_anchor)):
        positive_int(v, name)
    if match_init is not None:
        match_init = finite_float(match_init, "match_init", 0.0, low_open=True)
    dropout = finite_float(dropout, "dropout", 0.0, 1.0, high_open=True)  # p = 1 drops everything: 0 / 0
    lr = finite_float(lr, "lr", 0.0, low_open=True)
    weight_decay = finite_float(weight_decay, "weight_decay", low=0.0)
    max_local = optional_int(max_local, "max_local", low=1)
    val_topk = optional_int(val_topk, "val_topk", low=1)
    augment = boolean(augment, "augment")
    seed = integer(seed, "seed", 0, 2 ** 32 - 1)
    optional_path(checkpoint, "checkpoint")
    optional_path(resume, "resume")
    optional_callable(progress, "progress")
    optional_callable(on_epoch, "on_epoch")
    device = as_device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    G = _global(global_features, local, "global_features", "local")
    y = class_labels(labels, G.shape[0], "labels")
    RRT.check_config(dict(global_dim=G.shape[1], dim=dim, depth=depth, heads=heads, ffn=ffn, num_scales=1,
                          dropout=dropout, global_skip=global_skip))
    if local.dim != dim:
        raise ValueError(f"local: descriptors have dimension {local.dim} but dim={dim}")
    if val is not None:
        if not isinstance(val, (tuple, list)) or len(val) != 3:
            raise TypeError(f"val: expected (global features, LocalDescriptors, labels), got {type(val).__name__}")
        vG = _global(val[0], val[1], "val[0]", "val[1]")
        if vG.shape[0] < 2 or vG.shape[1] != G.shape[1] or val[1].dim != dim:
            raise ValueError(f"val: expected at least 2 images of global dimension {G.shape[1]} and local "
                             f"dimension {dim}, got {tuple(vG.shape)} and {val[1].dim}")
        val = (vG.to(device), val[1], class_labels(val[2], vG.shape[0], "val[2]"))
    G = G.to(device)
    torch.manual_seed(seed)
    model = RRT(G.shape[1], dim, depth, heads, ffn, max(local.num_scales, 1), dropout, global_skip).to(device)
    if match_init is not None:
        model.init_matching(match_init)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    top = neighbours_without_self(G, min(topk, G.shape[0] - 1)).cpu()
    rel = (y[top] == y.unsqueeze(1)) & (y.unsqueeze(1) >= 0)
    usable = torch.nonzero(rel.any(1) & (~rel).any(1)).squeeze(1)
    if usable.numel() == 0:
        raise ValueError("labels: no image has both a positive and a negative in its global top-k")
    steps = math.ceil(usable.numel() * triplets_per_anchor / batch_size)
    warmup = min(50, max(1, epochs * steps // 20))
    history, start = [], 0
    if resume is not None:
        payload = load_checkpoint(resume, fmt=FORMAT, what="pycsa RRT", how="`pycsa train --method rrt`")
        if payload["model_config"] != model.config:
            diff = sorted(k for k in model.config if payload["model_config"].get(k) != model.config[k])
            raise ValueError(f"resume: {resume} was trained with another model ({', '.join(diff)} differ)")
        if "optimizer" not in payload or "epoch" not in payload:
            raise ValueError(f"resume: {resume} holds a model only (no optimiser state); start a new run from it")
        model.load_state_dict(payload["state_dict"])
        opt.load_state_dict(payload["optimizer"])
        history, start = list(payload.get("history", [])), int(payload["epoch"])
        if "rng" in payload:
            set_rng_state(payload["rng"], device)
    with writing(checkpoint):
        history = _epochs(model, opt, G, local, y, top, rel, usable, steps, warmup, history, start, epochs, lr,
                          batch_size, triplets_per_anchor, max_local, augment, seed, device, val, val_topk, topk,
                          checkpoint, progress, on_epoch,
                          dict(topk=topk, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                               max_local=max_local, seed=seed, triplets_per_anchor=triplets_per_anchor,
                               match_init=match_init, augment=augment, global_skip=global_skip))
    return TrainResult(model.eval(), history)


def _epochs(model, opt, G, local, y, top, rel, usable, steps, warmup, history, start, epochs, lr, batch_size,
            triplets_per_anchor, max_local, augment, seed, device, val, val_topk, topk, checkpoint, progress,
            on_epoch, train_config):
    for epoch in range(start, epochs):
        model.train()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        anchors = usable.repeat(triplets_per_anchor)
        anchors = anchors[torch.randperm(anchors.numel(), generator=gen)]
        # one random positive and one random negative of each anchor's list
        noise = torch.rand(anchors.numel(), top.shape[1], generator=gen)
        r = rel[anchors]
        pos = top[anchors].gather(1, torch.where(r, noise, -1.0).argmax(1, keepdim=True)).squeeze(1)
        neg = top[anchors].gather(1, torch.where(~r, noise, -1.0).argmax(1, keepdim=True)).squeeze(1)
        total = 0.0
        for step in range(steps):
            a = anchors[step * batch_size:(step + 1) * batch_size]
            p, n_ = pos[step * batch_size:(step + 1) * batch_size], neg[step * batch_size:(step + 1) * batch_size]
            qi, di = torch.cat([a, a]), torch.cat([p, n_])
            target = torch.cat([torch.ones(a.numel()), torch.zeros(a.numel())]).to(device)
            gq, lq, sq, nq, gd, ld, sd, nd = pair_inputs(G, local, qi, di, max_local)
            if augment:
                perm, sign = _signed_permutations(qi.numel(), local.dim, gen)
                lq, ld = _permute(lq, perm, sign), _permute(ld, perm, sign)
                perm, sign = _signed_permutations(qi.numel(), G.shape[1], gen)
                gq, gd = _permute(gq, perm, sign), _permute(gd, perm, sign)
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (epoch * steps + step + 1) / warmup)
            loss = F.binary_cross_entropy_with_logits(model(gq, lq, sq, nq, gd, ld, sd, nd), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training diverged at epoch {epoch + 1}, step {step + 1}; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            if progress is not None:
                progress(epoch * steps + step + 1, epochs * steps)
        record = {"epoch": epoch + 1, "loss": total / steps, "val_map": None}
        if val is not None:
            record["val_map"] = validation_map(model, val[0], val[1], val[2], val_topk or topk, max_local)
        history.append(record)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, fmt=FORMAT, optimizer=opt.state_dict(), epoch=epoch + 1,
                            history=history, train_config=train_config, rng=rng_state(device))
        if on_epoch is not None:
            on_epoch(record)
    return history
