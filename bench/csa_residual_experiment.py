"""CSA with a residual gate, an experiment kept for the record (issue #18): does CSA help as
the last stage of a chain when its score is a learned correction of the previous stage's?

Score of candidate i: z(s_in)_i + g * z(csa)_i, z standardising over the list, g and a
temperature learned (mode "residual"); or the plain CSA cosine (mode "plain"). Lists come from
the first stage (--stage) on MPEG-7 classes 0-34 for training, 35-69 for testing; every image
a query against the others. Results: bench/results/*-csa-residual-mpeg7-*.md.
"""
import argparse, math, time
import numpy as np
import torch
import torch.nn.functional as F
import pycsa
from pycsa.datasets import load_retrieval_features
from pycsa.rerank.csa.model import CSA
from pycsa.ops import affinity
from pycsa.evaluate import class_map
from pycsa.ranking import Ranking

ap = argparse.ArgumentParser()
ap.add_argument("--stage", default="cosine")
ap.add_argument("--mode", default="residual", choices=["plain", "residual"])
ap.add_argument("--K", default="128")
ap.add_argument("--L", type=int, default=128)
ap.add_argument("--dim", type=int, default=64)
ap.add_argument("--depth", type=int, default=2)
ap.add_argument("--heads", type=int, default=1)
ap.add_argument("--epochs", type=int, default=6)
ap.add_argument("--bs", type=int, default=16)
ap.add_argument("--lr", type=float, default=3e-4)
ap.add_argument("--serveK", default="128")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--data", default="../shared/data/mpeg7/mpeg7_mobilenetv2_imagenet_gap1280.npz")
ap.add_argument("--test", default=None)
args = ap.parse_args()
torch.manual_seed(args.seed)

fs = load_retrieval_features(args.data)
tr, te = fs.class_half("first"), fs.class_half("second")
if args.test:
    te = load_retrieval_features(args.test)


def first_stage(name, X):
    X = torch.as_tensor(X).float()
    n = X.shape[0]
    s, i = pycsa.search(X, X, n)
    if name != "cosine":
        r = pycsa.create(name).rerank(X, X, Ranking(i, s))
        s, i = torch.as_tensor(r.scores).float(), torch.as_tensor(r.indices)
    is_self = i == torch.arange(n).unsqueeze(1)
    order = torch.sort(is_self.to(torch.uint8), dim=1, stable=True).indices
    return X, i.gather(1, order)[:, :n - 1], s.gather(1, order)[:, :n - 1]


def z(s):
    return (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + 1e-6)


class Gated(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.csa = CSA(args.L, args.dim, args.depth, args.heads, 0.0, 0.0)
        self.g = torch.nn.Parameter(torch.tensor(0.0))
        self.t = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, A, s_in):
        c = CSA.scores(self.csa(A))[:, 1:]
        if args.mode == "plain":
            return c / 2.0, c
        comb = z(s_in) + self.g * z(c)
        return comb * self.t, comb


def batch(X, idx, sc, q, K):
    need = max(K - 1, args.L - 1)
    A = affinity(X, idx[q, :need], args.L, queries=X[q])[:, :K]
    return A, sc[q, :K - 1]


Xtr, itr, str_ = first_stage(args.stage, tr.database)
ytr = torch.as_tensor(tr.db_labels)
Ks = [int(k) for k in args.K.split(",")]
model = Gated()
opt = torch.optim.AdamW([{"params": model.csa.parameters()}, {"params": [model.g, model.t], "lr": 3e-2, "weight_decay": 0}], lr=args.lr, weight_decay=1e-5)
n = Xtr.shape[0]
steps = math.ceil(n / args.bs) * args.epochs
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
t0 = time.time()
g = torch.Generator().manual_seed(args.seed)
for ep in range(args.epochs):
    order = torch.randperm(n, generator=g)
    tot = 0
    for b in range(0, n, args.bs):
        q = order[b:b + args.bs]
        K = Ks[int(torch.randint(len(Ks), (1,), generator=g))]
        A, s_in = batch(Xtr, itr, str_, q, K)
        logits, _ = model(A, s_in)
        rel = ytr[itr[q, :K - 1]] == ytr[q].unsqueeze(1)
        has = rel.any(1)
        lse_pos = torch.logsumexp(logits.masked_fill(~rel, float("-inf")), 1)
        loss = (torch.logsumexp(logits, 1) - lse_pos)[has].mean()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        tot += float(loss)
    print(f"epoch {ep+1} loss {tot / math.ceil(n / args.bs):.4f} g {float(model.g):.3f} t {float(model.t):.3f}", flush=True)
print(f"train {time.time()-t0:.1f}s")


@torch.no_grad()
def evaluate(fs_, K):
    X, idx, sc = first_stage(args.stage, fs_.database)
    y = np.asarray(fs_.db_labels)
    n = X.shape[0]
    K = min(K, n)
    new = idx.clone()
    for b in range(0, n, 64):
        q = torch.arange(b, min(b + 64, n))
        A, s_in = batch(X, idx, sc, q, K)
        _, comb = model(A, s_in)
        o = torch.sort(-comb, dim=1, stable=True).indices
        new[q, :K - 1] = idx[q, :K - 1].gather(1, o)
    own = torch.arange(n).unsqueeze(1)
    base = class_map(torch.cat([idx, own], 1).numpy(), y, y, exclude_self=True)
    got = class_map(torch.cat([new, own], 1).numpy(), y, y, exclude_self=True)
    return 100 * base, 100 * got


model.eval()
for K in [int(k) for k in args.serveK.split(",")]:
    b, g_ = evaluate(te, K)
    print(f"stage {args.stage} mode {args.mode} serveK {K}: input {b:.2f} -> {g_:.2f} ({g_ - b:+.2f})", flush=True)
