"""Build script for fastbert's compiled parts.

* ``fastbert._C``: the C++17 WordPiece tokenizer core (csrc/tokenizer.{h,cpp}, no Python in it) behind a
  thin pybind11 layer (csrc/bindings.cpp). Its Unicode tables (csrc/generated/unicode_tables.h) are
  generated at build time by scripts/gen_unicode_tables.py from UCD data (csrc/unicode/ucd-8.0.0.txt and
  Python's unicodedata). Always built; needs only a C++17 compiler and pybind11.
* ``fastbert._C_cuda`` (optional): the CUDA WordPiece batch path (csrc/cuda/*.cu), a plain pybind11
  + nvcc extension that writes into device buffers allocated by torch on the Python side, so torch is not
  needed to build it. Built only when ``nvcc`` is found and either a CUDA build of torch is importable
  or FASTBERT_BUILD_CUDA=1; FASTBERT_BUILD_CUDA=0 turns it off. If its compilation fails the CPU build
  still succeeds (a warning is printed) and the GPU path is simply unavailable.
"""
import glob
import os
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
if _want_cuda():
    ext_modules.append(Pybind11Extension("fastbert._C_cuda", _sources("csrc/cuda/*.cu"), cxx_std=17))

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
