"""What a user meets when installing and importing: the build's advice under pip's build
isolation, the torch the extension was built with, the type marker, a cheap import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import torch

import pycsa

ROOT = Path(__file__).resolve().parents[1]

# pip's isolated build environment, reduced to what matters here: PYTHONPATH names a folder
# whose sitecustomize hides the user's packages (here only torch) from the build
HIDE_TORCH = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'")
sys.meta_path.insert(0, _Hide())
"""


def test_build_isolation_hiding_torch_says_what_to_run(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HIDE_TORCH)
    res = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin"},
                         timeout=300)
    assert res.returncode != 0
    assert f"torch {torch.__version__} is installed" in res.stderr, res.stderr
    assert "pip install --no-build-isolation ." in res.stderr


def test_the_extension_records_the_torch_it_was_built_with():
    from pycsa.ops import _extension

    if _extension._C is None:
        import pytest

        pytest.skip("extension not built")
    assert _extension._C.torch_version == torch.__version__.split("+")[0]


def test_the_package_is_typed():
    assert (Path(pycsa.__file__).parent / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "setup.py").read_text()


def test_import_does_not_load_faiss():
    code = "import sys, pycsa; print('faiss' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


PUBLIC_MODULES = ["pycsa", "pycsa.ops", "pycsa.rerank", "pycsa.csa", "pycsa.rrt", "pycsa.compat", "pycsa.evaluate",
                  "pycsa.datasets", "pycsa.extract", "pycsa.tune"]


def _public_callables():
    """Every function in a public module's __all__, and every public method of its classes."""
    import importlib
    import inspect

    found = {}
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isclass(obj):
                for attr, f in vars(obj).items():
                    if inspect.isfunction(f) and (not attr.startswith("_") or attr in ("__init__", "__call__")):
                        found[f"{obj.__module__}.{obj.__qualname__}.{attr}"] = f
            elif inspect.isfunction(obj):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_the_public_api_is_fully_annotated():
    import inspect
    import typing

    missing = {}
    for name, f in _public_callables().items():
        sig = inspect.signature(f)
        lacks = [p.name for p in sig.parameters.values()
                 if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if sig.return_annotation is inspect.Signature.empty and not name.endswith("__init__"):
            lacks.append("return")
        if lacks:
            missing[name] = lacks
        else:
            typing.get_type_hints(f)  # every name an annotation uses resolves
    assert len(_public_callables()) > 80
    assert not missing, missing


def test_the_extension_carries_no_private_libstdcxx():
    # A toolchain whose libstdc++ is not the loaded one (CXX=/opt/gcc/bin/g++ on the H200 image)
    # linked parts of libstdc++ into _C; its error messages then crashed instead of raising.
    from pycsa import _linkcheck
    from pycsa.ops import _extension

    if _extension._C is None:
        pytest.skip("the extension is not built")
    symbols = _linkcheck.private_libstdcxx_symbols(_extension._C.__file__)
    if symbols is None:
        pytest.skip("nm is not available")
    assert symbols == [], _linkcheck.explain(_extension._C.__file__, symbols, "?")


def test_the_link_check_finds_a_static_libstdcxx(tmp_path):
    # the same damage on purpose: a library linked with -static-libstdc++ that formats a number
    import shutil

    from pycsa import _linkcheck

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or shutil.which("nm") is None:
        pytest.skip("needs g++ and nm")
    src = tmp_path / "fmt.cpp"
    src.write_text('#include <sstream>\n#include <string>\n'
                   'std::string fmt(long n) { std::ostringstream s; s << "n = " << n; return s.str(); }\n')
    private = tmp_path / "libprivate.so"
    shared = tmp_path / "libshared.so"
    made = subprocess.run([cxx, "-shared", "-fPIC", "-O1", str(src), "-o", str(private), "-static-libstdc++"],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no static libstdc++ to link: {made.stderr[-200:]}")
    subprocess.run([cxx, "-shared", "-fPIC", "-O1", str(src), "-o", str(shared)], check=True)
    assert _linkcheck.private_libstdcxx_symbols(str(private))
    assert _linkcheck.private_libstdcxx_symbols(str(shared)) == []
    # std::locale's template members, emitted (weak) by any code that adds a facet, are not a copy
    facet = tmp_path / "facet.cpp"
    facet.write_text('#include <locale>\nstruct F : std::locale::facet { static std::locale::id id; };\n'
                     'std::locale::id F::id;\nstd::locale with_f(const std::locale& l) { return std::locale(l, new F); }\n')
    with_facet = tmp_path / "libfacet.so"
    subprocess.run([cxx, "-shared", "-fPIC", "-O1", str(facet), "-o", str(with_facet)], check=True)
    assert _linkcheck.private_libstdcxx_symbols(str(with_facet)) == []
    assert _linkcheck.private_libstdcxx_symbols(str(src)) is None  # not a shared library: no verdict
