"""Static checks of csrc/cuda that hold without a GPU.

On the H200 machine (nvcc 13.0 with g++ 13.3, torch 2.11, commit b0c489c) a TORCH_CHECK in
a .cu file that formatted a number into its message killed the process with SIGSEGV
(inside std::ostream::_M_insert<long>, called from pycsa/_C) instead of raising: the bad-
graph test crashed the CUDA test run. The emulator and CI's compile check build the .cu
files with other compilers and cannot see it. So in .cu/.cuh files a TORCH_CHECK's
message is string literals only; messages with values come from csrc/cuda_checks.cpp
and the *_checks.cpp files, which the C++ compiler builds.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

CUDA = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
SOURCES = sorted(CUDA.glob("*.cu")) + sorted(CUDA.glob("*.cuh"))
CHECK = re.compile(r"\b(TORCH_CHECK\w*|AT_ERROR|TORCH_WARN\w*)\s*\(")
LITERAL = re.compile(r'\s*("(?:[^"\\]|\\.)*"\s*)+')


def _arguments(text: str, start: int) -> list[str]:
    """The top-level comma-separated arguments of the call whose '(' is at text[start]."""
    depth, args, cur, i, quoted = 0, [], [], start, False
    while i < len(text):
        ch = text[i]
        if quoted:
            cur.append(ch)
            if ch == "\\":
                cur.append(text[i + 1])
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
            cur.append(ch)
        elif ch in "([{":
            depth += 1
            if depth > 1:
                cur.append(ch)
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                args.append("".join(cur))
                return args
            cur.append(ch)
        elif ch == "," and depth == 1:
            args.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    raise AssertionError("unbalanced call")


def offending_checks(text: str) -> list[str]:
    bad = []
    for m in CHECK.finditer(text):
        if text[:m.start()].rstrip().endswith("#define"):
            continue
        args = _arguments(text, m.end() - 1)
        message = args[1:] if not m.group(1).startswith(("AT_ERROR", "TORCH_WARN")) else args
        if len(message) > 1 or (message and not LITERAL.fullmatch(message[0])):
            bad.append(f"{m.group(1)}({', '.join(a.strip() for a in args)})")
    return bad


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_cuda_sources_give_torch_check_literal_messages_only(path):
    assert offending_checks(path.read_text()) == [], (
        f"{path.name}: move these checks into csrc/cuda_checks.cpp (or a *_checks.cpp) and call them")


def test_the_scan_finds_a_formatted_message():
    # what b0c489c had in graph.cu, and what stays allowed
    assert offending_checks('TORCH_CHECK_INDEX(!b[3], "col: indices must lie in [0, ", n, ")");')
    assert offending_checks('TORCH_CHECK(major >= 8, "needs 8.0+, has ", major);')
    assert not offending_checks('TORCH_CHECK_VALUE(q.is_cuda(), "q: expected a CUDA tensor");')
    assert not offending_checks('TORCH_CHECK_VALUE(f(a, b), "split " "across lines");')
