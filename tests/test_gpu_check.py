"""scripts/gpu_check.sh dry-runs on CPU (the script a GPU session runs), so it cannot rot unnoticed: each
section writes its logs and results into OUTDIR and records every step's exit code."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("section", ["build", "compile"])
def test_gpu_check_dry_run(section, tmp_path):
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), section, str(tmp_path), "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    steps = (tmp_path / "steps.log").read_text().splitlines()
    exits = [line for line in steps if ": exit " in line]
    assert exits and all(line.endswith("exit 0") for line in exits), steps
    assert (tmp_path / ("env.json" if section == "build" else "compile.jsonl")).stat().st_size > 0


def test_gpu_check_rejects_unknown_section(tmp_path):
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "nonsense", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown section" in res.stderr
