"""Does a built extension carry its own copy of parts of libstdc++?

On the H200 image (2026-11-30) the environment's CXX was /opt/gcc/bin/g++, a toolchain whose
libstdc++ is not the one Python loads: linking with it put 29 libstdc++ functions into
pycsa/_C (std::locale::id::_M_id, the codecvt<char16_t> facets, ...). Those copies number the
locale facets apart from the loaded libstdc++, so the first C++ error message that formatted
a number (a bad index, an out-of-range split, CPU or CUDA alike) crashed the process with
SIGSEGV instead of raising. (Here, linking with -static-libstdc++ does the same damage more
quietly: the number and the rest of the message go missing.) Built with the system g++ the
same sources carry no copy and raise. setup.py checks every build with this;
tests/test_packaging.py checks the installed extension. Standard library only: setup.py loads this file before pycsa can be imported.
"""
from __future__ import annotations

import re
import shutil
import subprocess

# Members of std::locale (and std::locale::id, ::facet, ...) defined strongly (nm types T, D,
# B, R) are libstdc++'s own compiled code. Its template members (a facet-taking constructor,
# combine<>) and inline ones may be emitted by any C++ file, but only as weak symbols (W),
# which are not counted.
_OWN = re.compile(r"^_ZNK?St6locale")
_STRONG = frozenset("TDBR")


def private_libstdcxx_symbols(path: str) -> list[str] | None:
    """The libstdc++-internal symbols that the shared library at ``path`` defines itself
    (empty when it has none), or None when ``nm`` is missing or cannot read it."""
    nm = shutil.which("nm")
    if nm is None:
        return None
    try:
        out = subprocess.run([nm, "-D", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    found = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-2] in _STRONG and _OWN.match(parts[-1]):
            found.add(parts[-1])
    return sorted(found)


def explain(path: str, symbols: list[str], cxx: str, ldflags: str = "") -> str:
    return (f"pycsa: {path} was linked with its own copy of parts of libstdc++ ({len(symbols)} symbols, "
            f"e.g. {symbols[0]}), beside the libstdc++ that Python loads. Such a build garbles or crashes "
            "(SIGSEGV) on C++ error messages with numbers instead of raising. The link used CXX="
            f"{cxx}{f' and LDFLAGS={ldflags}' if ldflags else ''}: rebuild with the system compiler and "
            "without -static-libstdc++, e.g.\n"
            "    CC=gcc CXX=g++ pip install --no-build-isolation -e .")
