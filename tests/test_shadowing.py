"""The checkout never shadows an installed package.

`python -m pytest`, `python -m benchmarks` and any `python -c ...` typed at the repository root put the root
first on sys.path. A top-level folder there that is a regular package (has an `__init__.py`) then wins over an
installed package of the same name: our `kernels/` once hid Hugging Face's `kernels`, which transformers
imports from its modeling code, and every test that imported transformers failed at collection. These tests
run real subprocesses from the repository root, as a user would.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run_at_root(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def test_transformers_modeling_and_fastbert_kernels_from_the_root():
    """transformers' modeling code (which imports Hugging Face's `kernels` when installed) and fastbert's
    Triton kernels both import from the repository root, each from where it belongs."""
    pytest.importorskip("transformers")
    res = _run_at_root(f"""
        import importlib.util, os
        root = {str(ROOT)!r}
        import transformers.modeling_utils
        from transformers import BertModel
        from transformers.models.bert import modeling_bert
        import fastbert.kernels.attention as A
        assert os.path.realpath(A.__file__) == os.path.join(root, "kernels", "attention.py"), A.__file__
        spec = importlib.util.find_spec("kernels")
        if spec is not None and spec.origin not in (None, "namespace"):  # Hugging Face's package is installed
            import kernels
            assert not os.path.realpath(kernels.__file__).startswith(os.path.join(root, "kernels") + os.sep), kernels.__file__
            assert hasattr(kernels, "use_kernel_forward_from_hub"), dir(kernels)
        print("ok")
    """)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_no_checkout_folder_wins_over_an_installed_package(tmp_path):
    """For every top-level folder of the checkout, an installed package of that name is what `import name`
    gives at the repository root (one is planted on PYTHONPATH, which comes after the root on sys.path)."""
    names = sorted(p.name for p in ROOT.iterdir()
                   if p.is_dir() and p.name.isidentifier() and p.name != "fastbert" and not p.name.startswith("."))
    assert {"kernels", "benchmarks", "tests", "scripts"} <= set(names), names
    regular = [n for n in names if (ROOT / n / "__init__.py").exists()]
    assert not regular, f"top-level folders that are regular packages (they shadow installed ones): {regular}"
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("INSTALLED = True\n")
    res = _run_at_root(f"""
        import importlib
        wrong = [n for n in {names!r} if not getattr(importlib.import_module(n), "INSTALLED", False)]
        assert not wrong, f"the checkout shadows installed packages: {{wrong}}"
        print("ok")
    """, PYTHONPATH=str(tmp_path))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr[-3000:]


def test_entry_points_from_the_root():
    """`python -m benchmarks` (the checkout's runner) and `fastbert.benchmarks` (what `fastbert bench` runs,
    installed with fastbert) both start from the repository root."""
    for args in (["-m", "benchmarks", "--help"], ["-m", "fastbert.benchmarks", "--help"]):
        res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and "--suite" in res.stdout, (args, res.stderr[-3000:])
