"""Injects classic CUDA bugs, one at a time, into a copy of csrc/ and checks that the
emulated tests (tests/test_cuda_emulated.py) fail on each: the proof that they would
catch such a bug in a real kernel. ``make test-cuda-mutations`` runs it (CI too).

    python csrc/emu/mutations.py [--keep DIR] [--only NAME]

Each mutation edits one line of one file; the copy's emulated build is incremental, so
a mutation costs one .cu file's compile and the tests up to the first failure.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]

# (name, file under csrc/cuda, text, its replacement): each text must occur exactly once
MUTATIONS = [
    ("graph: off-by-one row bound (writes one entry past each row)", "sparse.cuh",
     "for (int64_t o = rowptr[r]; o < rowptr[r + 1]; ++o) rows[o] = r;",
     "for (int64_t o = rowptr[r]; o <= rowptr[r + 1] && o < rowptr[n]; ++o) rows[o] = r;"),
    ("graph: normalisation skips each row's last entry", "graph.cu",
     "for (int64_t o = rowptr[r]; o < rowptr[r + 1]; ++o) val[o] = norm > 0",
     "for (int64_t o = rowptr[r]; o + 1 < rowptr[r + 1]; ++o) val[o] = norm > 0"),
    ("graph: grid-stride loop bound off by one (a thread for row n)", "graph.cu",
     "for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < n; r += int64_t(gridDim.x) * blockDim.x) {\n    double sq",
     "for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r <= n; r += int64_t(gridDim.x) * blockDim.x) {\n    double sq"),
    ("k-reciprocal: off-by-one in the reciprocal neighbours (k1 instead of k1 + 1)", "kreciprocal.cu",
     "    for (int64_t a = 0; a <= k1; ++a) {\n      const int64_t c = rank[i * m + a];",
     "    for (int64_t a = 0; a < k1; ++a) {\n      const int64_t c = rank[i * m + a];"),
    ("affinity (SIMT): the barrier after the tile's products removed", "affinity.cu",
     "          for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];\n      }\n      __syncthreads();",
     "          for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];\n      }"),
    ("affinity (SIMT): padding of the shared tile left unwritten", "affinity.cu",
     "        a_s[c][r] = (mi < K && k < d) ? lists.row(b, mi)[k] : T(0);",
     "        if (mi < K && k < d) a_s[c][r] = lists.row(b, mi)[k];"),
    ("affinity (WMMA): matrix_b fragment with the wrong layout", "affinity.cu",
     "wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];",
     "wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];"),
    ("attention (SIMT): the barrier after loading a key/value tile removed", "attention.cu",
     "        v_s[j][c] = ok ? v.row(b, h, t0 + j)[c] : 0.f;\n      }\n      __syncthreads();",
     "        v_s[j][c] = ok ? v.row(b, h, t0 + j)[c] : 0.f;\n      }"),
    ("attention (WMMA): the barrier after loading a key/value tile removed", "attention.cu",
     "        load_tile<T, HD>(v, b, h, t0, len, vec, v_s, kLd);\n        __syncthreads();",
     "        load_tile<T, HD>(v, b, h, t0, len, vec, v_s, kLd);"),
]


def run(keep: str | None, only: str | None) -> int:
    work = pathlib.Path(keep or tempfile.mkdtemp(prefix="pycsa-mutations-"))
    src = work / "csrc"
    if not src.exists():
        shutil.copytree(ROOT / "csrc", src)
    env = dict(os.environ, PYCSA_EMU_SRC=str(src), PYCSA_REQUIRE_EMU="1", CUEMU_SCHEDULES="fwd,rev,random:1")
    # --capture=sys: what the emulator writes to fd 2 as a kernel crashes is not swallowed
    test = [sys.executable, "-m", "pytest", "-x", "-q", "--capture=sys", "-p", "no:cacheprovider",
            str(ROOT / "tests" / "test_cuda_emulated.py")]
    survived = []
    for name, file, old, new in MUTATIONS:
        if only and only not in name:
            continue
        path = src / "cuda" / file
        original = (ROOT / "csrc" / "cuda" / file).read_text()
        if original.count(old) != 1:
            print(f"MUTATION STALE  {name}: its text is not once in csrc/cuda/{file}; update {__file__}")
            survived.append(name)
            continue
        path.write_text(original.replace(old, new))
        t0 = time.perf_counter()
        try:
            res = subprocess.run(test, env=env, capture_output=True, text=True, timeout=1800)
        finally:
            path.write_text(original)
        caught = [line for line in res.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        if res.returncode != 0:
            crash = [line for line in res.stderr.splitlines() if line.startswith("cuemu: ")]
            why = caught[0] if caught else f"exit {res.returncode}: " + (crash[0] if crash else "a crash")
            print(f"caught    {name}  [{time.perf_counter() - t0:.0f} s]  {why}", flush=True)
        else:
            print(f"SURVIVED  {name}: the emulated tests passed with the bug in place", flush=True)
            survived.append(name)
    # the unmutated copy must pass, or every "caught" above means nothing
    res = subprocess.run(test, env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        print("the UNMUTATED copy fails the emulated tests:\n" + res.stdout[-3000:])
        return 1
    print(f"{len(survived)} of {len([m for m in MUTATIONS if not only or only in m[0]])} mutation(s) survived; "
          "the unmutated copy passes")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if survived else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="work folder to reuse (its build is then incremental across runs)")
    ap.add_argument("--only", help="run the mutations whose name contains this text")
    a = ap.parse_args()
    sys.exit(run(a.keep, a.only))
