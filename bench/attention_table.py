"""Markdown table of a bench/test_bench_attention.py run: pycsa against SDPA per case.

    pytest bench/test_bench_attention.py -k cpu --benchmark-json=att.json
    python bench/attention_table.py att.json > bench/results/DATE-attention-cpu-COMMIT.md
"""
import collections
import json
import os
import sys


def main(path):
    d = json.load(open(path))
    rows = collections.defaultdict(dict)
    for b in d["benchmarks"]:
        p = b["params"]
        if not {"device", "case", "dtype", "impl"} <= p.keys():  # other benchmarks in a shared JSON
            continue
        rows[(p["device"], p["case"], p["dtype"])][p["impl"]] = b["stats"]["median"]
    info = d.get("machine_info", {})
    # COMMIT from the environment first: the device copy's git state can be stale (gpu_session.sh sets it)
    commit = os.environ.get("COMMIT") or d.get("commit_info", {}).get("id", "?")[:7]
    print(f"# Attention: pycsa.ops.attention vs torch SDPA (commit {commit})\n")
    print(f"`pytest bench/test_bench_attention.py --benchmark-json=...`, one run, medians; "
          f"{info.get('cpu', {}).get('brand_raw', '')}, {info.get('cpu', {}).get('count', '?')} cores.")
    print("Cases (12 heads of 64): t256 = 8 sequences x 256 tokens; t1024 = 1 x 1024; t1024-b16 = 16 x 1024;")
    print("t2048 = 8 x 2048; ragged = 8 x 1024 with valid lengths 128..1024 (pycsa: `lengths`;")
    print("SDPA: the same padded batch with a key-padding mask).\n")
    print("| device | case | dtype | pycsa (ms) | SDPA (ms) | SDPA / pycsa |")
    print("|---|---|---|---|---|---|")
    for (dev, case, dt), v in sorted(rows.items()):
        if "pycsa" in v and "sdpa" in v:
            print(f"| {dev} | {case} | {dt} | {v['pycsa'] * 1e3:.2f} | {v['sdpa'] * 1e3:.2f} | {v['sdpa'] / v['pycsa']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
