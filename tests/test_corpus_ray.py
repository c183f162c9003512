"""The Ray engine's tests (tests/ray_cases.py: a local Ray with 2 CPUs, started once, shut down after), in a
pytest process of their own: a Ray driver leaves dozens of threads, and so malloc arenas, in its process, which
the RSS-growth check of tests/test_tokenizer_corpus.py (later in the same session) would count. Skipped
without ray or pyarrow."""
import subprocess
import sys
from pathlib import Path

import pytest


def test_ray_engine_in_its_own_process(minilm_dir):  # minilm_dir: skip without the model
    pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    cases = Path(__file__).with_name("ray_cases.py")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(cases)],
                       capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "2 passed" in r.stdout, r.stdout[-2000:]
