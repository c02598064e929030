"""Time of `pycsa.extract.GlobalExtractor` per image (SuperGlobal pooling, 3 scales) in float32
and bfloat16 on this CPU, and how far the bfloat16 descriptors are from the float32 ones.

    python bench/extract_speed.py [--backbone resnet50] [--size 1024x768] [--repeat 3]

Random weights: the time does not depend on them. Ratios are what to compare across CPUs.
"""
from __future__ import annotations

import argparse
import time

import torch

from pycsa.extract import GlobalExtractor, build_backbone


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    trunk, _ = build_backbone(args.backbone, "random")
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"oneDNN bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, threads {torch.get_num_threads()}")
    out = {}
    for dtype in ("float32", "bfloat16"):
        ex = GlobalExtractor(trunk, device="cpu", dtype=dtype)
        ex(x[:, :, :128, :128])  # warm-up
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            out[dtype] = ex(x)
            times.append(time.perf_counter() - t)
        print(f"{args.backbone} {w}x{h}, scales 0.7071/1/1.4142, {dtype}: min {min(times):.2f} s per image")
        out[dtype + "_t"] = min(times)
    cos = float((out["float32"] * out["bfloat16"]).sum())
    print(f"bfloat16 / float32 time: {out['bfloat16_t'] / out['float32_t']:.2f}; cosine of the descriptors: {cos:.6f}")


if __name__ == "__main__":
    main()
