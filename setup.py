"""Build script for fastbert's compiled parts.

The C++17 WordPiece tokenizer core lives in csrc/ (no Python in it); csrc/bindings.cpp exposes it as
``fastbert._C`` through pybind11. The CUDA batch path in csrc/cuda/ is optional: it is compiled only when
``nvcc`` is found and a CUDA build of torch is importable at build time (or FASTBERT_BUILD_CUDA=1), so the
CPU build always works.
"""
import glob
import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def _sources(pattern):
    return sorted(glob.glob(pattern))


ext_modules = [
    Pybind11Extension(
        "fastbert._C",
        _sources("csrc/*.cpp"),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
