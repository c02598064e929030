"""CSA as the last stage of a chain (issue #18), an experiment kept for the record: the
affinity features come from the previous stage's refined similarities instead of raw
cosines, optionally with the cosine affinities beside them and a residual to the input score.

MPEG-7 classes 0-34 train, 35-69 test, every image a query against the others (leave-one-out).
Each half's stage similarity S (n x n) is the stage's scores on full-depth lists; a list is the
query and its top K-1 by S; A[b, i, j] = S[item_i, anchor_j] (anchors: the list's first L).
Results: bench/results/*-csa-chain-mpeg7-*.md.
"""
import argparse
import json
import math
import time

import numpy as np
import torch

import pycsa
from pycsa.datasets import load_retrieval_features
from pycsa.evaluate import class_map
from pycsa.ranking import Ranking
from pycsa.rerank.csa.model import CSA

ap = argparse.ArgumentParser()
ap.add_argument("--stage", default="cosine")
ap.add_argument("--params", default="{}", help="JSON parameters of the stage")
ap.add_argument("--aff-stage", default=None, help="the stage whose similarity gives the 'stage' affinity channel "
                "(default: --stage itself)")
ap.add_argument("--aff-params", default="{}", help="JSON parameters of --aff-stage")
ap.add_argument("--channels", default="stage", help="comma list of: stage, cosine")
ap.add_argument("--residual", action="store_true", help="score = z(s_in) + g z(csa)")
ap.add_argument("--K", default="128", help="training K, comma list: one drawn per batch")
ap.add_argument("--L", type=int, default=128)
ap.add_argument("--dim", type=int, default=64)
ap.add_argument("--depth", type=int, default=2)
ap.add_argument("--heads", type=int, default=1)
ap.add_argument("--epochs", type=int, default=6)
ap.add_argument("--bs", type=int, default=16)
ap.add_argument("--lr", type=float, default=3e-4)
ap.add_argument("--wd", type=float, default=1e-5)
ap.add_argument("--tau", type=float, default=0.5)
ap.add_argument("--loss", default="mass", choices=["mass", "perpos", "pair"],
                help="mass: -log softmax mass of the relevant items (the paper's); perpos: each relevant "
                     "item against the irrelevant ones; pair: logistic loss of every relevant/irrelevant pair")
ap.add_argument("--aug", type=int, default=0, help="extra perturbed copies of the training half")
ap.add_argument("--drop-dims", type=float, default=0.2, help="feature dropout of a perturbed copy")
ap.add_argument("--keep", type=float, default=0.8, help="fraction of images kept in a perturbed copy")
ap.add_argument("--norm", default="z", choices=["z", "none", "max"])
ap.add_argument("--serveK", default="128")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--trace", action="store_true", help="test mAP after every epoch (for the record only)")
ap.add_argument("--data", default="../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz")
ap.add_argument("--json", default=None)
ap.add_argument("--train-all", action="store_true", help="train on all of MPEG-7 (for --test coil)")
ap.add_argument("--test", default="second", choices=["second", "coil"],
                help="coil: the COIL-like set of bench/diffusion_truncated_side_by_side.py (unseen data)")
args = ap.parse_args()
torch.manual_seed(args.seed)
channels = args.channels.split(",")
params = json.loads(args.params)


def stage_matrix(X: torch.Tensor, stage=None, stage_params=None) -> torch.Tensor:
    """The stage's n x n similarity, every row a query against all rows."""
    stage = args.stage if stage is None else stage
    stage_params = params if stage_params is None else stage_params
    X = torch.nn.functional.normalize(X.float(), dim=1)
    n = X.shape[0]
    if stage == "cosine":
        return X @ X.T
    s, i = pycsa.search(X, X, n)
    r = pycsa.create(stage, **stage_params).rerank(X, X, Ranking(i, s))
    S = torch.full((n, n), float("nan"))
    S.scatter_(1, torch.as_tensor(r.indices).long(), torch.as_tensor(r.scores).float())
    return S


class View:
    """One half (or a perturbed copy): features, labels, stage similarity, lists without self."""

    def __init__(self, X, y, depth):
        self.X = torch.nn.functional.normalize(torch.as_tensor(X).float(), dim=1)
        self.y = torch.as_tensor(y)
        self.S = stage_matrix(self.X)
        self.SA = self.S if args.aff_stage is None else stage_matrix(self.X, args.aff_stage,
                                                                     json.loads(args.aff_params))
        self.C = self.X @ self.X.T
        n = self.X.shape[0]
        key = self.S.clone()
        key.fill_diagonal_(float("-inf"))
        order = torch.sort(-key, dim=1, stable=True).indices  # ties to the lower index
        self.lists = order[:, :n - 1]  # the full ranking, self left out

    def batch(self, q, K):
        L = args.L
        need = max(K, L) - 1
        items = torch.cat([q.unsqueeze(1), self.lists[q, :need]], 1)  # B x max(K, L)
        anchors = items[:, :L]
        parts = []
        for c in channels:
            M = self.SA if c == "stage" else self.C
            A = M[items[:, :K].unsqueeze(2), anchors.unsqueeze(1)]  # B x K x L
            if args.norm == "z":
                A = (A - A.mean((1, 2), keepdim=True)) / (A.std((1, 2), keepdim=True) + 1e-6)
            elif args.norm == "max":
                A = A / A.abs().amax((1, 2), keepdim=True).clamp_min(1e-12)
            parts.append(A)
        s_in = self.S[q.unsqueeze(1), items[:, 1:K]]
        return torch.cat(parts, 2), s_in, items[:, 1:K]


def z(s):
    return (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + 1e-6)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.csa = CSA(args.L * len(channels), args.dim, args.depth, args.heads, 0.0, 0.0)
        self.g = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, A, s_in):
        c = CSA.scores(self.csa(A))[:, 1:]
        if not args.residual:
            return c / args.tau, c
        comb = z(s_in) + self.g * z(c)
        return comb / (args.tau * 4), comb


fs = load_retrieval_features(args.data)
tr, te = (fs if args.train_all else fs.class_half("first")), fs.class_half("second")
if args.test == "coil":
    import sys, types
    sys.path.insert(0, "bench")
    from diffusion_truncated_side_by_side import coil_like
    Xc, yc = coil_like()
    te = types.SimpleNamespace(database=Xc, db_labels=yc)
Ks = [int(k) for k in args.K.split(",")]
depth = max(max(Ks), args.L, max(int(k) for k in args.serveK.split(","))) - 1
t0 = time.time()
views = [View(tr.database, tr.db_labels, depth)]
gen = torch.Generator().manual_seed(args.seed)
for a in range(args.aug):
    Xa = torch.as_tensor(tr.database).float()
    keep = torch.randperm(Xa.shape[0], generator=gen)[:int(args.keep * Xa.shape[0])].sort().values
    mask = (torch.rand(Xa.shape[1], generator=gen) >= args.drop_dims).float()
    views.append(View(Xa[keep] * mask, np.asarray(tr.db_labels)[keep.numpy()], depth))
test = View(te.database, te.db_labels, depth)
print(f"stage {args.stage} {params}: views built in {time.time() - t0:.1f}s", flush=True)

model = Model()
opt = torch.optim.AdamW([{"params": model.csa.parameters()}, {"params": [model.g], "lr": 3e-2, "weight_decay": 0}],
                        lr=args.lr, weight_decay=args.wd)
samples = [(v, i) for v in range(len(views)) for i in range(views[v].X.shape[0])]
steps = math.ceil(len(samples) / args.bs) * args.epochs
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))


@torch.no_grad()
def evaluate(view, K):
    model.eval()
    n = view.X.shape[0]
    K = min(K, n)
    lists = view.lists
    new = lists.clone()
    for b in range(0, n, 64):
        q = torch.arange(b, min(b + 64, n))
        A, s_in, _ = view.batch(q, K)
        _, comb = model(A, s_in)
        o = torch.sort(-comb, dim=1, stable=True).indices
        new[q, :K - 1] = lists[q, :K - 1].gather(1, o)
    model.train()
    own = torch.arange(n).unsqueeze(1)
    y = view.y.numpy()
    base = class_map(torch.cat([lists, own], 1).numpy(), y, y, exclude_self=True)
    got = class_map(torch.cat([new, own], 1).numpy(), y, y, exclude_self=True)
    return 100 * base, 100 * got


def list_loss(logits, rel):
    """Per-list loss (B,), zero for lists without a relevant or without an irrelevant item."""
    has = rel.any(1) & (~rel).any(1)
    if args.loss == "mass":
        lse_pos = torch.logsumexp(logits.masked_fill(~rel, float("-inf")), 1)
        return torch.where(has, torch.logsumexp(logits, 1) - lse_pos, 0.0)
    if args.loss == "perpos":
        neg = torch.logsumexp(logits.masked_fill(rel, float("-inf")), 1, keepdim=True)  # B x 1
        per = torch.logaddexp(logits, neg) - logits  # -log(e^s_p / (e^s_p + sum_neg e^s_n))
        return torch.where(has, (per * rel).sum(1) / rel.sum(1).clamp_min(1), 0.0)
    d = logits.unsqueeze(1) - logits.unsqueeze(2)  # [b, p, n] = s_n - s_p
    w = (rel.unsqueeze(2) & ~rel.unsqueeze(1)).float()
    return torch.where(has, (torch.nn.functional.softplus(d) * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1), 0.0)


t0 = time.time()
for ep in range(args.epochs):
    order = torch.randperm(len(samples), generator=gen)
    tot = 0.0
    nb = 0
    for b in range(0, len(samples), args.bs):
        chosen = [samples[int(j)] for j in order[b:b + args.bs]]
        K = Ks[int(torch.randint(len(Ks), (1,), generator=gen))]
        parts = []
        for v in {c[0] for c in chosen}:
            q = torch.tensor([i for vv, i in chosen if vv == v])
            A, s_in, items = views[v].batch(q, K)
            rel = views[v].y[items] == views[v].y[q].unsqueeze(1)
            parts.append((A, s_in, rel))
        loss = 0.0
        for A, s_in, rel in parts:
            logits, _ = model(A, s_in)
            loss = loss + list_loss(logits, rel).sum()
        loss = loss / len(chosen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        tot += float(loss.detach())
        nb += 1
    line = f"epoch {ep + 1} loss {tot / nb:.4f} g {float(model.g.detach()):.3f}"
    if args.trace:
        line += f" train {evaluate(views[0], Ks[0])[1]:.2f} (input {evaluate(views[0], Ks[0])[0]:.2f})"
        line += " test " + " ".join(f"K{k}:{evaluate(test, k)[1]:.2f}" for k in map(int, args.serveK.split(",")))
    print(line, flush=True)
print(f"train {time.time() - t0:.1f}s")
out = {"args": vars(args), "results": []}
for K in map(int, args.serveK.split(",")):
    b, g_ = evaluate(test, K)
    out["results"].append({"K": K, "input": b, "csa": g_})
    print(f"stage {args.stage} channels {args.channels} residual {args.residual} serveK {K}: "
          f"input {b:.2f} -> {g_:.2f} ({g_ - b:+.2f})", flush=True)
if args.json:
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
