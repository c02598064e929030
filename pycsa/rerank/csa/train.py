"""Training CSA (SPEC §2): samples from labelled features, contrastive + MSE loss, SGD with
warm-up and cosine decay, validation mAP per epoch, resumable checkpoints, DDP."""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..._checks import boolean, finite_float, integer, optional_callable, optional_int, optional_path, positive_int
from ..._tensors import as_device, as_tensor, check_features, class_labels
from ..._types import ArrayLike, Device, PathLike
from ...ops import affinity
from ...ranking import Progress
from ...search import neighbours_without_self
from ..checkpoint import rng_state, set_rng_state, writing
from ..placement import serving_dtype
from ..validation import resorted_class_map
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .model import CSA, LIMITS
from .serve import csa_scores
from .stage import StageTable, check_stage, check_stage_jitter, draw_stage_params, stage_affinity, stage_table


@dataclass
class TrainResult:
    model: CSA
    """The trained model, in eval mode."""
    history: list = field(default_factory=list)
    """One dict per epoch: epoch, loss, contrastive, mse, lr, val_map (None without validation data)."""


@dataclass
class _SampleSet:
    X: torch.Tensor  # N x d features of one extractor (or a perturbed copy)
    ranks: torch.Tensor  # N x (max(K, L) - 1): each image's neighbours, itself left out
    relevant: torch.Tensor  # N x (max(K, L) - 1): same label as the image
    table: StageTable | None = None  # a stage-trained model's: the stage's ranking of X (see stage.py)
    scores: torch.Tensor | None = None  # N x (max(K, L) - 1): the stage's scores of ``ranks``


def build_samples(features: list, labels: torch.Tensor, K: int, L: int, *, perturb: int = 0, dense: int = 0,
                  gen: torch.Generator | None = None, stage: tuple[str, dict] | None = None,
                  stage_depth: int | None = None, stage_jitter: dict | None = None) -> list[_SampleSet]:
    """One sample per image and feature set: the image as query and its top-max(K, L)
    list (itself first) in the same feature set; with ``stage`` (name, params), the list is the
    stage's leave-one-out ranking of the set, kept to ``stage_depth``. ``perturb``: that many more sets per
    feature set, each of a random 80% of the images with a random 20% of the feature
    dimensions zeroed (new neighbours, new lists: on a small training set the model
    otherwise learns its lists by heart). ``stage_jitter`` ({parameter: (low, high)}, checked by
    :func:`.stage.check_stage_jitter`): each copy's stage parameters drawn from those bounds, the
    feature set itself keeps ``stage``'s, so that the model learns what the stage misses over a
    range of its settings rather than at one."""
    depth = max(K, L) - 1
    sets = []
    for X in features:
        views = [(X, labels)]
        n, d = X.shape
        keep_n = max(depth + 1, int(0.8 * n))
        for _ in range(perturb):
            keep = torch.randperm(n, generator=gen)[:keep_n].sort().values.to(X.device)
            dims = (torch.rand(d, generator=gen) >= 0.2).to(X.device, X.dtype)
            views.append((X[keep] * dims, labels[keep]))
        for _ in range(dense):
            view = dense_view(X, labels, depth + 1, gen)
            if view is None:  # mostly distractors: the labelled items cannot fill a list
                warnings.warn(f"dense: the labelled items, grown fourfold, cannot fill lists of {depth + 1}; "
                              "no dense copies", stacklevel=2)
                break
            views.append(view)
        for j, (Xv, yv) in enumerate(views):
            table = scores = None
            if stage is None:
                ranks = neighbours_without_self(Xv, depth)
            else:
                # drawn after every copy is made: without jitter the copies are what they were
                params = draw_stage_params(stage[1], stage_jitter, gen) if stage_jitter and j else stage[1]
                table = stage_table(Xv, stage[0], params, max(stage_depth or depth, depth))
                ranks, scores = table.without_self(depth)
            # a negative label marks a distractor: relevant to nothing, not even another distractor
            relevant = (yv[ranks] == yv.unsqueeze(1)) & (yv.unsqueeze(1) >= 0)
            sets.append(_SampleSet(Xv, ranks, relevant, table, scores))
    return sets


DENSE_GROWTH = 4


def dense_view(X: torch.Tensor, labels: torch.Tensor, min_size: int, gen: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A set of a random quarter of the classes, each grown fourfold by points on the segments
    between two of its items: lists with four times the relevant items, as in data with many
    views per object, where the cosine ranking is already good and a model trained only on
    small classes over-corrects it. A new point has the direction of the mix and the mixed norm
    of its two items (unit for unit features). Classes are added until the set has ``min_size``
    items; distractors (negative labels) are left out. None when all of them hold fewer."""
    y = labels.cpu()
    classes = torch.unique(y[y >= 0])
    order = classes[torch.randperm(classes.numel(), generator=gen)]
    parts, part_labels, size = [], [], 0
    for i, c in enumerate(order.tolist()):
        if i >= max(2, classes.numel() // DENSE_GROWTH) and size >= min_size:
            break
        members = torch.nonzero(y == c).squeeze(1)
        m = members.numel()
        extra = (DENSE_GROWTH - 1) * m
        a = members[torch.randint(m, (extra,), generator=gen)].to(X.device)
        b = members[torch.randint(m, (extra,), generator=gen)].to(X.device)
        lam = torch.rand(extra, 1, generator=gen).to(X.device, X.dtype)
        norm = lam * X[a].norm(dim=1, keepdim=True) + (1 - lam) * X[b].norm(dim=1, keepdim=True)
        mixed = F.normalize(lam * X[a] + (1 - lam) * X[b], dim=1) * norm
        parts += [X[members.to(X.device)], mixed]
        part_labels.append(torch.full((m + extra,), c, dtype=labels.dtype, device=labels.device))
        size += m + extra
    if size < min_size:
        return None
    return torch.cat(parts), torch.cat(part_labels)


def make_batch(sets: list[_SampleSet], ids: torch.Tensor, K: int, L: int, gen: torch.Generator):
    """Affinity features (b x K x L), relevance (b x K, the query counted relevant) and the
    input ranking's scores of items 2..K (b x (K - 1): the cosines, or the stage's scores) of
    samples ``ids`` (numbered set after set, image after image), rows 2..K randomly permuted
    as the authors do."""
    sizes = torch.tensor([sset.X.shape[0] for sset in sets])
    starts = torch.cumsum(sizes, 0) - sizes
    which = torch.searchsorted(torch.cumsum(sizes, 0), ids, right=True)
    A_parts, rel_parts, base_parts = [], [], []
    for s, sset in enumerate(sets):
        img = ids[which == s] - starts[s]
        if img.numel() == 0:
            continue
        img = img.to(sset.X.device)
        if sset.table is None:
            A_s = affinity(sset.X, sset.ranks[img], L, queries=sset.X[img])[:, :K]
            base_parts.append(A_s[:, 1:, 0].float())  # the candidates' affinity to the query: their cosine
        else:
            A_s = stage_affinity(sset.table, img, sset.ranks[img][:, :max(K, L) - 1], L)[:, :K]
            base_parts.append(sset.scores[img][:, :K - 1])
        A_parts.append(A_s)
        rel = sset.relevant[img][:, :K - 1]
        rel_parts.append(torch.cat([torch.ones_like(rel[:, :1]), rel], dim=1))
    A, rel, base = torch.cat(A_parts), torch.cat(rel_parts), torch.cat(base_parts)
    b = A.shape[0]
    # Rows are permuted within the anchors (2..L) and within the rest (L+1..K), not across:
    # a standardising model takes its statistics from the first L rows, which must stay the
    # anchors' rows as at serving. (Without positional embeddings the permutation changes
    # nothing else; it is kept as the authors' augmentation.)
    split = min(L, K)
    keys = torch.rand(b, K, generator=gen)
    keys[:, 0] = -1.0  # the query stays first
    keys[:, split:] += 2.0  # after every anchor
    order = torch.argsort(keys, dim=1).to(A.device)
    return (A.gather(1, order.unsqueeze(-1).expand(-1, -1, A.shape[2])), rel.gather(1, order),
            base.gather(1, order[:, 1:] - 1))


LOSSES = ("mass", "positive")


def csa_loss(y: torch.Tensor, rec: torch.Tensor, A: torch.Tensor, relevant: torch.Tensor, tau: float = 2.0,
             lam: float = 0.2, *, loss: str = "mass", scores: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_C + λ·L_M (SPEC §2). L_C with ``loss="mass"`` (the paper's): −log of the softmax
    mass (temperature τ) of the relevant items among items 2..K, by cosine to the query's
    refined feature; lists without a relevant item are left out. ``loss="positive"``: the
    mean over the relevant items of −log(e^{s_p} / (e^{s_p} + Σ_irrelevant e^{s_n})), so that
    every relevant item must rise above the irrelevant ones; lists without a relevant or
    without an irrelevant item are left out. The mass is already small once one relevant
    item leads: it lets the others fall, which costs mAP (on MPEG-7 a residual model trained
    with it lost 8 points while its loss fell; bench/results/*-csa-chain-mpeg7-*.md).
    ``scores``: the scores to rank by (B x (K - 1)), default the cosines of ``y``.
    L_M: squared distance between each affinity row and its reconstruction from y, both
    L2-normalised, averaged over items."""
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
    s = (CSA.scores(y)[:, 1:] if scores is None else scores) / tau
    pos = relevant[:, 1:]
    has = pos.any(dim=1) if loss == "mass" else pos.any(dim=1) & (~pos).any(dim=1)
    if not has.any():
        l_c = s.sum() * 0.0
    elif loss == "mass":
        lse_pos = torch.logsumexp(s.masked_fill(~pos, float("-inf")), dim=1)
        l_c = (torch.logsumexp(s, dim=1) - lse_pos)[has].mean()
    else:
        s, pos = s[has], pos[has]
        neg = torch.logsumexp(s.masked_fill(pos, float("-inf")), dim=1, keepdim=True)
        per_item = torch.logaddexp(s, neg) - s
        l_c = ((per_item * pos).sum(dim=1) / pos.sum(dim=1)).mean()
    l_m = (F.normalize(rec.float(), dim=-1) - F.normalize(A.float(), dim=-1)).pow(2).sum(-1).mean()
    return l_c + lam * l_m, l_c.detach(), l_m.detach()


@torch.no_grad()
def validation_map(model: CSA, X: torch.Tensor, labels: ArrayLike, k: int, *, batch_size: int = 64,
                   stage_ranking: StageTable | None = None) -> float:
    """Class mAP on a labelled set, every image a query against the others, after CSA
    re-ranks each query's top-``k`` (query included). A stage-trained model re-ranks the
    stage's ranking; ``stage_ranking``: that ranking, whole (``stage_table(X, ..., n - 1)``),
    if already computed (training computes it once, not every epoch)."""
    X = torch.as_tensor(X)
    table = None
    if model.stage is None:
        top = neighbours_without_self(X, X.shape[0] - 1)
        input_scores = None
        if model.residual:  # the cosines of the ranking, a block of queries at a time
            input_scores = torch.cat([(X[b:b + 256] @ X.T).gather(1, top[b:b + 256]) for b in range(0, X.shape[0], 256)])
    else:  # the stage's ranking, whole; its table to the model's depth is its first columns (STAGES)
        full = stage_ranking if stage_ranking is not None else \
            stage_table(X, model.stage, model.stage_params, X.shape[0] - 1)
        top, input_scores = full.without_self(X.shape[0] - 1)
        table = StageTable(full.indices[:, :model.stage_depth + 1], full.scores[:, :model.stage_depth + 1],
                           full.self_score)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(X.device.type, dtype=torch.bfloat16, enabled=serving_dtype(X.device) == torch.bfloat16):
            s = csa_scores(model, X, X, top, k, batch_size=batch_size, dtype=X.dtype, input_scores=input_scores,
                           stage_table=table, own=None if table is None else torch.arange(X.shape[0]))
    finally:
        model.train(was_training)
    return resorted_class_map(top, s, labels)


def _features_list(features, name):
    if isinstance(features, (list, tuple)):
        items = [as_tensor(f, f"{name}[{i}]")[0] for i, f in enumerate(features)]
    else:
        items = [as_tensor(features, name)[0]]
    if not items:
        raise ValueError(f"{name}: empty list")
    for i, X in enumerate(items):
        check_features(X, f"{name}[{i}]")
        if X.shape[0] != items[0].shape[0]:
            raise ValueError(f"{name}[{i}]: {X.shape[0]} rows; every feature set must describe the same "
                             f"{items[0].shape[0]} images (in the same order)")
    return [X.float() for X in items]


def _distributed(device: torch.device):
    """(rank, world size, started): starts the process group when launched by torchrun
    (``started``: this call started it, so training ends it). NCCL for CUDA training,
    gloo for the CPU; a long timeout, since the other ranks wait while rank 0 validates."""
    import datetime

    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1, False
    started = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
        started = True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), started
    return 0, 1, False


def _training_device(device) -> torch.device:
    """The device of this process: under torchrun, ``cuda`` (or the default on a GPU
    machine) means the GPU of this process's LOCAL_RANK, made the current one."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if int(os.environ.get("WORLD_SIZE", "1")) > 1 else
                              torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def train(features: ArrayLike | list[ArrayLike], labels: ArrayLike, *, val_features: ArrayLike | None = None,
          val_labels: ArrayLike | None = None, K: int = 512, L: int = 512, dim: int = 768,
          depth: int = 2, heads: int = 12, dropout: float = 0.1, drop_path: float = 0.1, epochs: int = 100,
          batch_size: int = 256, lr: float | None = None, warmup_epochs: int | None = None, momentum: float = 0.9,
          weight_decay: float = 1e-5, tau: float = 2.0, lam: float = 0.2, amp: bool | None = None,
          device: Device = None, checkpoint: PathLike | None = None, resume: PathLike | None = None, seed: int = 0,
          val_k: int | None = None, optimizer: str = "sgd", loss: str = "mass", residual: bool = False,
          standardize: bool = False, perturb: int = 0, dense: int = 0, stage: str | None = None,
          stage_params: dict | None = None, stage_jitter: dict | None = None, progress: Progress = None, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Trains a CSA model on labelled features (SPEC §2) and returns it with its history.

    ``features``: one N x d matrix, or a list of matrices of the same N images from
    different extractors (their samples are pooled: the paper's augmentation).
    ``labels``: N class/cluster ids (negative: a distractor, relevant to nothing). Every image is a query; its list is itself and its
    top-(max(K, L) - 1) neighbours in the same feature set, rows 2..K permuted.
    Optimiser: SGD (momentum, weight decay), lr = 0.1 x batch/256 unless given, as the
    paper; ``optimizer="adamw"`` (lr 1e-3 x batch/256 by default) converges in far fewer
    steps on small training sets. Both: linear warm-up for ``warmup_epochs`` then cosine decay to 0, stepped per batch.
    ``K``: an int, or several (a list), one drawn per batch, so that the model meets the
    list lengths it will serve. ``loss``: "mass" (the paper's) or "positive" (see
    :func:`csa_loss`). ``residual``, ``standardize``: the model options of :class:`CSA`
    (a residual model is trained on the cosine ranking's scores). ``perturb``: perturbed
    copies of each feature set (see :func:`build_samples`). ``stage`` (a training-free
    re-ranker's name, with ``stage_params``): the model is trained over that re-ranker's
    leave-one-out ranking of each set, its lists, scores (for a residual model) and, as
    affinities, its scores between the items (see :mod:`.stage`); it is served after the same
    stage (``Chain([create("k_reciprocal"), CSAReranker(path)])``, ``--method k_reciprocal+csa``).
    ``stage_jitter`` ({parameter: (low, high)}): the stage's parameters drawn from those bounds for
    each perturbed or dense copy (see :func:`build_samples`); the model is served at ``stage_params``.
    ``amp``: bfloat16 autocast (default on for CUDA GPUs of compute capability 8.0+). ``checkpoint``: path written after
    every epoch (model, optimiser, schedule, config, history); ``resume``: a path to
    continue from. ``progress(done, total)`` is called per batch; ``on_epoch(record)``
    after each epoch. Under torchrun, training runs data-parallel (DDP): ``batch_size``
    is the global batch, split over the processes; rank 0 validates and writes checkpoints.
    """
    # Every argument is checked before any work: a bad one found after the samples are
    # built, or at the first step (drop_path=1 gives NaN there), costs minutes and is
    # misreported as divergence.
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        positive_int(v, name)
    Ks = list(K) if isinstance(K, (list, tuple)) else [K]
    if not Ks:
        raise ValueError("K: an empty list; give one list length or several")
    Ks = [integer(k, "K", low=2, high_is="the query and at least one candidate") for k in Ks]
    K = max(Ks)
    L = integer(L, "L", 1, LIMITS["num_anchors"])
    CSA.check_config(dict(num_anchors=L, dim=dim, depth=depth, heads=heads, dropout=dropout, drop_path=drop_path,
                          residual=residual, standardize=standardize))
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
    perturb = integer(perturb, "perturb", low=0)
    dense = integer(dense, "dense", low=0)
    stage, stage_params = check_stage(stage, stage_params)
    stage_jitter = check_stage_jitter(stage, stage_params, stage_jitter)
    if stage_jitter and perturb + dense == 0:
        warnings.warn("stage_jitter: no perturbed or dense copies (perturb=0, dense=0), so no copy to draw the "
                      "stage's parameters for; the training set keeps stage_params", stacklevel=2)
    for name, v in (("dropout", dropout), ("drop_path", drop_path)):  # p = 1 drops everything: 0 / 0
        finite_float(v, name, 0.0, 1.0, high_open=True)
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer: expected 'sgd' or 'adamw', got {optimizer!r}")
    lr = (0.1 if optimizer == "sgd" else 1e-3) * batch_size / 256 if lr is None else \
        finite_float(lr, "lr", 0.0, low_open=True)
    warmup_epochs = (max(1, epochs // 20) if epochs > 1 else 0) if warmup_epochs is None else \
        integer(warmup_epochs, "warmup_epochs", low=0)
    momentum = finite_float(momentum, "momentum", 0.0, 1.0, high_open=True)
    weight_decay = finite_float(weight_decay, "weight_decay", low=0.0)
    tau = finite_float(tau, "tau", 0.0, low_open=True)
    lam = finite_float(lam, "lam", low=0.0)
    amp = boolean(amp, "amp", allow_none=True)
    seed = integer(seed, "seed", 0, 2 ** 32 - 1)
    val_k = optional_int(val_k, "val_k", low=1)
    optional_path(checkpoint, "checkpoint")
    optional_path(resume, "resume")
    optional_callable(progress, "progress")
    optional_callable(on_epoch, "on_epoch")
    if device is not None:
        as_device(device)
    feats = _features_list(features, "features")
    n = feats[0].shape[0]
    y = class_labels(labels, n, "labels")
    if max(K, L) > n:
        raise ValueError(f"K, L: the lists need max(K, L) = {max(K, L)} images but the training set has {n}")
    if (val_features is None) != (val_labels is None):
        given, missing = ("val_features", "val_labels") if val_labels is None else ("val_labels", "val_features")
        raise ValueError(f"{missing}: needed with {given} (the validation mAP needs both)")
    val_X = val_y = None
    if val_features is not None:
        val_X = _features_list(val_features, "val_features")[0]
        val_y = class_labels(val_labels, val_X.shape[0], "val_labels")
        if val_X.shape[0] < 2:
            raise ValueError(f"val_features: {val_X.shape[0]} image(s); validation ranks each against the others")

    device = _training_device(device)
    rank, world, started = _distributed(device)
    amp = serving_dtype(device) == torch.bfloat16 if amp is None else amp

    torch.manual_seed(seed)
    model = CSA(L, dim, depth, heads, dropout, drop_path, residual, standardize, stage, stage_params,
                max(K, L) if stage else None).to(device)
    if world > 1:
        torch.manual_seed(seed + 1_000_003 * rank)  # same initial weights, own dropout masks per rank
    # A residual model's gate is one scalar that must travel to about 1-2 from 0: at the
    # network's learning rate it would take thousands of steps, so it learns 100x faster,
    # without weight decay (which would pull it back to the input order).
    groups = [{"params": [p for name, p in model.named_parameters() if name != "gate"]}]
    if residual:  # capped: SGD's default lr (0.1 x batch / 256) times 100 would throw it about
        groups.append({"params": [model.gate], "lr": min(100 * lr, 0.1), "weight_decay": 0.0})
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    sets = build_samples([X.to(device) for X in feats], y.to(device), K, L, perturb=perturb, dense=dense,
                         gen=torch.Generator().manual_seed(seed), stage=None if stage is None else (stage, stage_params),
                         stage_depth=model.stage_depth, stage_jitter=stage_jitter)
    n_samples = sum(sset.X.shape[0] for sset in sets)
    steps = math.ceil(n_samples / batch_size)
    if n_samples % batch_size and n_samples % batch_size < world:
        steps -= 1  # every process needs a share of every batch
    total, warm = epochs * steps, warmup_epochs * steps

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    jitter_config = {key: list(b) for key, b in stage_jitter.items()}
    train_config = dict(optimizer=optimizer, K=Ks if len(Ks) > 1 else K, L=L, loss=loss, perturb=perturb, dense=dense,
                        stage_jitter=jitter_config, epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs,
                        momentum=momentum, weight_decay=weight_decay, tau=tau, lam=lam, amp=amp, seed=seed,
                        feature_sets=len(feats), images=n)
    history, start = [], 0
    if resume is not None:
        payload = load_checkpoint(resume)
        want = model.config
        got = payload["model_config"]
        for key in ("num_anchors", "dim", "depth", "heads", "residual", "standardize", "stage", "stage_params",
                    "stage_depth"):
            if CSA.check_config(got)[key] != want[key]:
                label = "L" if key == "num_anchors" else key
                raise ValueError(f"resume: {resume} was trained with {label}={got[key]}, this run asks for "
                                 f"{label}={want[key]}")
        model.load_state_dict(model_from_checkpoint(payload, resume).state_dict())
        if "optimizer" not in payload:
            raise ValueError(f"resume: {resume} holds a model only (no optimiser state); start a new run from it")
        # options that change the samples, the steps per epoch (so the schedule) or the loss
        old = payload.get("train_config", {})
        for key, now, before in (("loss", loss, old.get("loss", "mass")), ("perturb", perturb, old.get("perturb", 0)),
                                 ("dense", dense, old.get("dense", 0)),
                                 ("stage_jitter", jitter_config, old.get("stage_jitter", {})),
                                 ("K", train_config["K"], old.get("K", train_config["K"]))):
            if (list(now) if isinstance(now, (list, tuple)) else now) != \
                    (list(before) if isinstance(before, (list, tuple)) else before):
                raise ValueError(f"resume: {resume} was trained with {key}={before}, this run asks for {key}={now}")
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["scheduler"])
        history, start = list(payload.get("history", [])), int(payload["epoch"])
        if "rng" in payload and world == 1:  # dropout continues where the interrupted run was
            set_rng_state(payload["rng"], device)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    val_X = None if val_X is None else val_X.to(device)
    val_k = max(K, L) if val_k is None else val_k
    val_stage = None if val_X is None or stage is None else \
        stage_table(val_X, stage, stage_params, val_X.shape[0] - 1)

    with writing(checkpoint if rank == 0 else None):
        for epoch in range(start, epochs):
            model.train()
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # same order on every process
            # the list length of each batch from a generator of its own: make_batch draws from
            # ``gen`` as many numbers as a process's share of the batch, which may differ
            k_gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7919)
            order = torch.randperm(n_samples, generator=gen)
            sums = torch.zeros(3, dtype=torch.float64)
            for step in range(steps):
                ids = order[step * batch_size:(step + 1) * batch_size][rank::world]
                k = Ks[int(torch.randint(len(Ks), (1,), generator=k_gen))] if len(Ks) > 1 else K
                A, rel, base = make_batch(sets, ids, k, L, gen)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out, rec = net(A, reconstruct=True)
                # a residual model corrects the input ranking: the cosines, or the stage's scores
                scores = model.rescore(out, base) if residual else None
                total_loss, l_c, l_m = csa_loss(out, rec, A, rel, tau, lam, loss=loss, scores=scores)
                if not torch.isfinite(total_loss):
                    raise FloatingPointError(f"training diverged at epoch {epoch + 1}, step {step + 1} "
                                             f"(loss {float(total_loss)}); lower lr (now {sched.get_last_lr()[0]:.3g})")
                opt.zero_grad(set_to_none=True)
                total_loss.backward()
                opt.step()
                sched.step()
                sums += torch.tensor([float(total_loss.detach()), float(l_c), float(l_m)], dtype=torch.float64)
                if progress is not None:
                    progress(epoch * steps + step + 1, total)
            if world > 1:
                import torch.distributed as dist

                reduced = sums.to(device)  # nccl reduces CUDA tensors only
                dist.all_reduce(reduced)
                sums = reduced.cpu()
            means = (sums / max(1, steps * world)).tolist()
            record = {"epoch": epoch + 1, "loss": means[0], "contrastive": means[1], "mse": means[2],
                      "lr": sched.get_last_lr()[0], "val_map": None}
            if rank == 0:
                if val_X is not None:
                    record["val_map"] = validation_map(model, val_X, val_y, val_k, stage_ranking=val_stage)
                history.append(record)
                if checkpoint is not None:
                    save_checkpoint(checkpoint, model, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                    epoch=epoch + 1, history=history, train_config=train_config,
                                    rng=rng_state(device))
                if on_epoch is not None:
                    on_epoch(record)
            else:
                history.append(record)
            if world > 1:
                torch.distributed.barrier()
    if started:
        # A group left to interpreter shutdown can abort a rank at exit ("terminate called
        # without an active exception" from a gloo thread), failing a finished run.
        torch.distributed.destroy_process_group()
    return TrainResult(model.eval(), history)
