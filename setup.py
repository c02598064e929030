"""Build pycsa and its extension pycsa._C.

The C++ kernels are always built. The CUDA kernels are added when the installed
torch has CUDA and nvcc is found; PYCSA_WITH_CUDA=1 forces them (and fails
loudly if they cannot be built), PYCSA_WITH_CUDA=0 leaves them out.
Install with `pip install --no-build-isolation .` (or `-e .`): the build uses the
torch that is already installed rather than downloading another one.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

def _torch_outside_build_env():
    """The torch that pip's build isolation hides: the same interpreter without the isolated
    environment's paths sees the user's site-packages again. Returns its version or None."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    try:
        out = subprocess.run([sys.executable, "-c", "import torch, sys; sys.stdout.write(torch.__version__ + ' ' + torch.__file__)"],
                             env=env, capture_output=True, text=True, timeout=120, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    hidden = _torch_outside_build_env()
    if hidden:
        version, where = hidden.split(" ", 1)
        sys.exit(
            f"pycsa: torch {version} is installed ({os.path.dirname(where)}), but pip's build isolation hides it "
            "from this build.\nInstall with the installed torch visible:\n"
            "    pip install --no-build-isolation .        (or -e . for a development install)"
        )
    sys.exit(
        "pycsa: torch must be installed before pycsa is built, e.g.\n"
        "    pip install torch==2.13.0\n"
        "    pip install --no-build-isolation .\n"
        "(--no-build-isolation makes the build use that torch instead of fetching another)."
    )

HERE = os.path.dirname(os.path.abspath(__file__))


def _linkcheck():
    # pycsa/_linkcheck.py by path: the package itself cannot be imported before it is built
    import importlib.util

    spec = importlib.util.spec_from_file_location("_pycsa_linkcheck", os.path.join(HERE, "pycsa", "_linkcheck.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """torch's build, then a check that the linked extension did not take in a private copy of
    libstdc++ (pycsa/_linkcheck.py says how that crashed a CUDA build)."""

    def build_extensions(self):
        super().build_extensions()
        check = _linkcheck()
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            symbols = check.private_libstdcxx_symbols(path) if os.path.exists(path) else None
            if symbols:
                os.remove(path)
                sys.exit(check.explain(path, symbols, os.environ.get("CXX", "c++"), os.environ.get("LDFLAGS", "")))


TORCH_RELEASE = ".".join(torch.__version__.split("+")[0].split(".")[:2])


def sources(pattern):
    # The directories are the source list; CMakeLists.txt globs the same patterns.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def with_cuda():
    choice = os.environ.get("PYCSA_WITH_CUDA", "auto").strip().lower()
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if choice in ("0", "off", "false", "no"):
        return False
    if choice in ("1", "on", "true", "yes"):
        if not possible:
            sys.exit(
                "pycsa: PYCSA_WITH_CUDA=1 but the installed torch has no CUDA "
                f"(torch.version.cuda={torch.version.cuda}) or nvcc was not found (CUDA_HOME={CUDA_HOME})."
            )
        return True
    return possible


def extension():
    cpp = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    # -fno-trapping-math -fno-math-errno, as torch itself is built: no value changes, but
    # without them GCC will not vectorise a float clamp (min/max) below AVX-512, and the
    # AVX2 variants of the loops in csrc/cpu/isa.h would stay scalar.
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    if with_cuda():
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            "pycsa._C",
            cpp + sources("csrc/cuda/*.cu"),
            define_macros=[("PYCSA_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension("pycsa._C", cpp, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])


setup(
    name="pycsa",
    version="0.1.0",
    description="Fast re-ranking for image retrieval and re-identification: CSA, GNN, k-reciprocal, QE, diffusion",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["pycsa", "pycsa.*"]),
    package_data={"pycsa": ["py.typed"]},  # PEP 561: the annotations are part of the API
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt},
    # The extension links against the torch it was built with, whose C++ ABI changes between
    # minor releases: the wheel requires that release (e.g. torch==2.13.*), and pycsa._C records
    # the exact version, which the import compares (pycsa/ops/_extension.py).
    install_requires=[f"torch=={TORCH_RELEASE}.*", "numpy", "tqdm"],
    extras_require={
        "faiss": ["faiss-cpu"],
        "io": ["scipy"],  # .mat feature files
        "plot": ["matplotlib"],  # pycsa eval --plot
        "images": ["pillow"],  # pycsa extract: decoding JPEG/PNG
        "test": ["pytest", "pytest-benchmark", "hypothesis", "scipy", "matplotlib", "pillow"],
    },
    entry_points={"console_scripts": ["pycsa = pycsa.cli:main"]},
    zip_safe=False,
)
