"""CSA serving latency per list length K (SPEC §2's table: 2080Ti 7/19/37/55 ms per query
at K = 128/512/1024/1536), default model (L=512, D=768, 2 blocks, 12 heads).

    python bench/csa_latency.py [--device cpu|cuda] [--batch 64] [--dtype float32|bfloat16]
                                [--ks 128,256,512,768,1024,1536] [--out bench/results/...md]

Times the whole serving step per batch of queries: affinity features from the database
(n=20,000, d=2048, like R-GeM on ROxf+distractors) through pycsa.ops.affinity, the model
forward, the new scores, i.e. CSAReranker.rerank minus the final sort. Untrained
weights (the time does not depend on them). Median of --repeat runs after a warm-up;
on CUDA with events and CUDA graphs, as CSAReranker serves.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import torch

from pycsa.csa import CSA, csa_scores
from pycsa.rerank.csa.serve import _GraphedModel


def _commit() -> str:
    if os.environ.get("COMMIT"):  # the device copy has no .git: gpu_session.sh passes it
        return os.environ["COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        out = ""
    return out or "unknown"


def measure(model, X, Q, top, K, dtype, device, repeat, batch):
    forward = _GraphedModel(model) if device == "cuda" else model

    def run():
        return csa_scores(model, Q, X, top, K, batch_size=batch, dtype=dtype, forward=forward)

    run()  # warm-up: allocations, graph capture, lazy init
    times = []
    for _ in range(repeat):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="queries per batch (default: 64 on CUDA, 8 on CPU)")
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--ks", default="128,256,512,768,1024,1536")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--out", help="write a markdown table (and a .json beside it)")
    args = ap.parse_args()
    device = torch.device(args.device).type  # "cuda:0" times like "cuda" (graphs, events)
    if device == "cuda" and args.device != "cuda":
        torch.cuda.set_device(torch.device(args.device))
    batch = args.batch or (64 if device == "cuda" else 8)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    repeat = args.repeat or (20 if device == "cuda" else 3)
    ks = [int(k) for k in args.ks.split(",")]

    g = torch.Generator().manual_seed(0)
    X = torch.nn.functional.normalize(torch.randn(args.n, args.d, generator=g), dim=1).to(device)
    Q = torch.nn.functional.normalize(torch.randn(batch, args.d, generator=g), dim=1).to(device)
    torch.manual_seed(0)
    model = CSA().to(device=device, dtype=dtype).eval()
    rows = []
    for K in ks:
        top = torch.randint(0, args.n, (batch, max(K, 512) - 1), generator=g).to(device)
        sec = measure(model, X, Q, top, K, dtype, device, repeat, batch)
        rows.append({"K": K, "batch_ms": sec * 1e3, "ms_per_query": sec * 1e3 / batch})
        print(f"K={K:5d}  batch of {batch}: {sec * 1e3:9.2f} ms   per query: {sec * 1e3 / batch:8.3f} ms", flush=True)

    where = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    paper = {128: 7, 512: 19, 1024: 37, 1536: 55}
    lines = [f"# CSA serving latency per K ({device}: {where})", "",
             f"commit {_commit()}; torch {torch.__version__}; `python bench/csa_latency.py --device {device} "
             f"--batch {batch} --dtype {str(dtype).split('.')[-1]} --ks {args.ks}`", "",
             f"Default model (L=512, D=768, depth 2, 12 heads), {str(dtype).split('.')[-1]}; database "
             f"{args.n} x {args.d}; batches of {batch} queries; median of {repeat} runs after a warm-up. "
             "Per query = batch time / batch. Paper: 2080Ti, per query.", "",
             "| K | batch (ms) | per query (ms) | paper 2080Ti (ms/query) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['K']} | {r['batch_ms']:.2f} | {r['ms_per_query']:.3f} | {paper.get(r['K'], '')} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump({"device": device, "where": where, "dtype": str(dtype), "batch": batch, "rows": rows,
                       "commit": _commit(), "torch": torch.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
