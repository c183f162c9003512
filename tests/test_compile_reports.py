"""sm_90 compile reports (no GPU needed): every config the attention autotuner may pick for BERT's head dims
compiles without register spills in its heaviest variants, and the backward's dQ atomics are relaxed (plain
RED reductions, no per-atomic fence). The full sweep (every variant, head dims 32/64/128) is
`python scripts/compile_report.py` (exit 1 on a spill); this is its CI slice."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("cr", sys.argv[1]); cr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cr)
heavy = [dict(VARLEN=True, HAS_MASK=False, CAUSAL=False, DROPOUT=True),
         dict(VARLEN=False, HAS_MASK=True, CAUSAL=False, DROPOUT=True)]
for kernel in ("fwd", "dkdv", "dq"):
    for d in (32, 64):
        for config in cr.candidate_configs(kernel, d):
            for variant in heavy:
                row = cr.compile_one(kernel, config, variant, d)
                print(json.dumps(row), flush=True)
# the dK/dV kernel of the separate-dQ backward (deterministic=True, and every backward above head dim 64)
for d, atomic in ((64, False), (128, False)):  # (d128 with atomics: never launched, see ATOMIC_DQ_MAX_HEAD_DIM)
    for config in cr.candidate_configs("dkdv", d, atomic_dq=atomic):
        for variant in heavy:
            print(json.dumps(cr.compile_one("dkdv", config, variant, d, atomic_dq=atomic)), flush=True)
"""


def test_autotune_configs_do_not_spill_on_sm90():
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(ROOT / "scripts" / "compile_report.py")], env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) >= 20
    spilling = [(r["kernel"], r["head_dim"], r["BLOCK_M"], r["BLOCK_N"], r["num_warps"], r["spill_stores"])
                for r in rows if r["spill_stores"]]
    assert not spilling, spilling
    for r in rows:
        assert r["registers"] and (r["sass"].get("HGMMA") or r["sass"].get("HMMA")), r  # on the tensor cores
        if r["kernel"] == "dkdv" and r["ATOMIC_DQ"]:
            assert r["sass"].get("RED") and not r["sass"].get("ATOM"), r["sass"]  # relaxed dQ reductions
    assert any(r["kernel"] == "dkdv" and not r["ATOMIC_DQ"] and r["sass"].get("HGMMA") for r in rows)  # wgmma
