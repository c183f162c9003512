"""Build script for fastbert's compiled parts.

* ``fastbert._C``: the C++17 WordPiece tokenizer core (csrc/tokenizer.{h,cpp}, no Python in it) behind a
  thin pybind11 layer (csrc/bindings.cpp). Its Unicode tables (csrc/generated/unicode_tables.h) are
  generated at build time by scripts/gen_unicode_tables.py from UCD data (csrc/unicode/ucd-8.0.0.txt and
  Python's unicodedata). Always built; needs only a C++17 compiler and pybind11.
* ``fastbert._C_cpu`` (x86-64 Linux with GCC or Clang): the cpu backend's attention on AMX tiles
  (csrc/cpu/attention_amx.cpp), a plain pybind11 extension that takes raw pointers, so torch is not needed to
  build it either. Built with OpenMP, whose runtime at run time is torch's (``fastbert.ops.cpu`` imports torch
  first). The AMX instructions sit in functions compiled for AMX only; the module loads on any x86-64 CPU and
  is called only where the CPU has AMX-BF16. If its compilation fails the build still succeeds (a warning is
  printed) and the cpu backend uses PyTorch's attention.
* ``fastbert._C_cuda`` (optional): the CUDA WordPiece batch path (csrc/cuda/*.cu), a plain pybind11
  + nvcc extension that writes into device buffers allocated by torch on the Python side, so torch is not
  needed to build it. Built only when ``nvcc`` is found and either a CUDA build of torch is importable
  or FASTBERT_BUILD_CUDA=1; FASTBERT_BUILD_CUDA=0 turns it off. If its compilation fails the CPU build
  still succeeds (a warning is printed) and the GPU path is simply unavailable.
"""
import glob
import os
import platform
import shutil
import subprocess
import sys
import sysconfig

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(glob.glob(pattern))


def _generate_tables():
    subprocess.check_call([sys.executable, os.path.join(ROOT, "scripts", "gen_unicode_tables.py"),
                           os.path.join(ROOT, "csrc", "generated", "unicode_tables.h")])


def _nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _want_cuda():
    flag = os.environ.get("FASTBERT_BUILD_CUDA")
    if flag == "0" or _nvcc() is None:
        return False
    if flag == "1":
        return True
    try:
        import torch  # noqa: F401  (only asked whether it is a CUDA build)
        return torch.version.cuda is not None
    except Exception:
        return False


class BuildExt(build_ext):
    """Generates the Unicode tables first; compiles the optional CUDA extension with nvcc."""

    def run(self):
        _generate_tables()
        super().run()

    def build_extension(self, ext):
        if ext.name == "fastbert._C_cpu":
            try:
                return super().build_extension(ext)
            except Exception as e:  # the tokenizer build must always work
                print(f"WARNING: fastbert._C_cpu (AMX attention) was not built: {e}", file=sys.stderr)
                return None
        if ext.name != "fastbert._C_cuda":
            return super().build_extension(ext)
        try:
            self._build_cuda(ext)
        except Exception as e:  # the CPU build must always work
            print(f"WARNING: fastbert._C_cuda (CUDA tokenizer path) was not built: {e}", file=sys.stderr)

    def _build_cuda(self, ext):
        import pybind11

        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = [_nvcc(), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr",
               "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
               "-gencode", "arch=compute_90,code=compute_90",
               "-I" + os.path.join(ROOT, "csrc"), "-I" + pybind11.get_include(),
               "-I" + sysconfig.get_paths()["include"], *ext.sources, "-o", out, "-cudart", "static"]
        print(" ".join(cmd))
        subprocess.check_call(cmd)


ext_modules = [
    Pybind11Extension(
        "fastbert._C",
        _sources("csrc/*.cpp"),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]
if platform.machine().lower() in ("x86_64", "amd64") and sys.platform.startswith("linux"):
    ext_modules.append(Pybind11Extension(
        "fastbert._C_cpu",
        _sources("csrc/cpu/*.cpp"),
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    ))
if _want_cuda():
    ext_modules.append(Pybind11Extension("fastbert._C_cuda", _sources("csrc/cuda/*.cu"), cxx_std=17))

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
