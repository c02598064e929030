"""Builds csrc/cuda (host and device code, unchanged) as C++ on cuemu: the emulated
operator library ``torch.ops.pycsa_emu.*`` that the CUDA tests run on CPU tensors.

    python csrc/emu/build_emulated.py [--sanitize thread | address,undefined] [--src DIR] [--verbose]

Sources are read from ``--src`` (default: the checkout's csrc/, a copy for bug-injection
runs) and never modified: rewrite.py writes launch-rewritten copies into the build folder.
The operator schemas come from csrc/registration.cpp (renamed to ``pycsa_emu``); the CPU
twins stay those of pycsa._C (``torch.ops.pycsa.*``). Output: build/emu[-SANITIZERS]/
under the checkout (or ``--out``), plus the self-test executable of cuemu's own checks.
A sanitizer build opens only in a process that preloads the sanitizer's runtime, as
``make test-cuda-sanitize`` runs the tests (the tests build it themselves).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import rewrite  # noqa: E402

# Small limits (the CUDA sources' defaults are for GPU memory) so that the small test inputs
# run the loops a large input needs: several staged blocks and expanded-set chunks in
# k-reciprocal, grid-strided loops over rows and over lists.
TEST_LIMITS = ["-DPYCSA_KRECIP_BLOCK_ELEMS=200", "-DPYCSA_KRECIP_SET_SCRATCH=256",
               "-DPYCSA_SPARSE_MAX_BLOCKS=2", "-DPYCSA_MAX_GRID_Z=2"]

SANITIZERS = {"": [], "thread": ["thread"], "address,undefined": ["address", "undefined"]}


def _flags(sanitize: str) -> list[str]:
    if sanitize not in SANITIZERS:
        raise SystemExit(f"--sanitize: one of {', '.join(repr(s) for s in SANITIZERS if s)}, got {sanitize!r}")
    return [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all"] if sanitize else []


@contextlib.contextmanager
def _compilers_without_preload():
    """A sanitizer build is loaded by a process that preloads the sanitizer's runtime
    (LD_PRELOAD, make test-cuda-sanitize), where load() opens it; the compilers that load()
    starts must not inherit that preload (they fail under it)."""
    saved = os.environ.pop("LD_PRELOAD", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["LD_PRELOAD"] = saved


@contextlib.contextmanager
def _build_lock(out: pathlib.Path):
    """One build at a time per folder, under a lock that dies with its process. torch's load()
    marks a build in progress with a plain file, ``lock``, that a killed build leaves behind;
    the next load() then waits for it forever (a test run that hangs without a word). Under
    this flock nobody else is building here, so a ``lock`` file found is such a leftover."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "build.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        stale = out / "lock"
        if stale.exists():
            print(f"cuemu build: removing {stale}, left by a build that was killed", file=sys.stderr)
            stale.unlink()
        yield


def _write_if_changed(path: pathlib.Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:  # keep mtimes: no needless rebuilds
        path.write_text(text)


def build(src=None, sanitize: str = "", out=None, verbose: bool = False) -> pathlib.Path:
    """Builds (or finds up to date) the emulated library and loads it into this process
    (``torch.ops.pycsa_emu.*``); returns the .so's path."""
    src = pathlib.Path(src or ROOT / "csrc").resolve()
    san = _flags(sanitize)
    # a copy of csrc (bug injection) gets a build folder of its own
    tag = "" if src == (ROOT / "csrc").resolve() else "-" + hashlib.sha1(str(src).encode()).hexdigest()[:8]
    out = pathlib.Path(out or ROOT / "build" / ("emu" + ("-" + "-".join(SANITIZERS[sanitize]) if sanitize else "") + tag))
    with _build_lock(out):
        return _build(src, san, out, verbose)


def _build(src: pathlib.Path, san: list[str], out: pathlib.Path, verbose: bool) -> pathlib.Path:
    from torch.utils.cpp_extension import load as _load

    gen = out / "src"
    gen.mkdir(parents=True, exist_ok=True)
    rewrite.main(src / "cuda", gen, quiet=not verbose)
    reg = (src / "registration.cpp").read_text()
    reg = reg.replace("TORCH_LIBRARY(pycsa, m)", "TORCH_LIBRARY(pycsa_emu, m)")
    reg = re.sub(r"TORCH_LIBRARY_IMPL\(pycsa, CPU, m\) \{.*?\n\}\n", "", reg, flags=re.S)
    reg = f'#line 1 "{src / "registration.cpp"}"\n' + reg + (
        "\n// for the tests (ctypes): the kernels launched so far, one line each\n"
        'extern "C" const char* cuemu_get_launch_log() { return ::cuemu::launch_log().c_str(); }\n'
        'extern "C" void cuemu_reset_launch_log() { ::cuemu::launch_log().clear(); }\n'
    )
    _write_if_changed(gen / "emu_registration.cpp", reg)
    checks = sorted(str(p) for p in src.glob("*_checks.cpp"))
    so = out / "pycsa_emu.so"
    # nvcc contracts a*b+c into an FMA by default (-fmad=true); -mfma -ffp-contract=fast
    # lets GCC do the same kind of contraction, so rounding-sensitive code is exercised.
    cflags = ["-O2", "-g", "-fno-omit-frame-pointer", "-DPYCSA_WITH_CUDA", "-mfma", "-ffp-contract=fast",
              "-Wno-unknown-pragmas", "-include", "cuemu.h"] + TEST_LIMITS + san
    with _compilers_without_preload():
        _load(name="pycsa_emu",
              sources=sorted(str(p) for p in gen.glob("*.cu.cpp")) + [str(gen / "emu_registration.cpp")] + checks,
              extra_cflags=cflags, extra_ldflags=san + ["-Wl,-Bsymbolic"],
              extra_include_paths=[str(HERE), str(HERE / "shim"), str(gen), str(src / "cuda"), str(src)],
              build_directory=str(out), is_python_module=False, verbose=verbose)
    return so


def build_selftest(sanitize: str = "", out=None, verbose: bool = False) -> pathlib.Path:
    """csrc/emu/selftest.cu (the emulator's own checks: each classic bug is reported) as an
    executable; returns its path."""
    from torch.utils.cpp_extension import load

    san = _flags(sanitize)
    out = pathlib.Path(out or ROOT / "build" / ("emu-selftest" + ("-" + "-".join(SANITIZERS[sanitize]) if sanitize else "")))
    text, _ = rewrite.rewrite((HERE / "selftest.cu").read_text(), str(HERE / "selftest.cu"))
    with _build_lock(out), _compilers_without_preload():
        _write_if_changed(out / "selftest.cu.cpp", text)
        load(name="cuemu_selftest", sources=[str(out / "selftest.cu.cpp")],
             extra_cflags=["-O1", "-g", "-Wno-unknown-pragmas"] + san, extra_ldflags=san,
             extra_include_paths=[str(HERE), str(HERE / "shim")], build_directory=str(out),
             is_standalone=True, is_python_module=False, verbose=verbose)
    return out / "cuemu_selftest"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=None, help="a csrc/ folder (default: the checkout's)")
    ap.add_argument("--sanitize", default="", choices=[s for s in SANITIZERS])
    ap.add_argument("--out", default=None)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    print(build(a.src, a.sanitize, a.out, a.verbose))
    print(build_selftest(a.sanitize, verbose=a.verbose))
