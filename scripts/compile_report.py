"""sm_90 compile report of fastbert's attention kernels, without a GPU: registers, spills and the SASS
instructions that matter (wgmma, atomics, fences) for every config the autotuner may pick.

    python scripts/compile_report.py                    # BERT's variants, head dims 32 and 64, bf16
    python scripts/compile_report.py --full --json out.json
    python scripts/compile_report.py --kernels fwd --head-dims 64 --limit 3

Triton compiles each kernel to PTX and cubin for sm_90 (GPUTarget("cuda", 90, 32)); ptxas -v (triton's
own) gives registers, stack frame and spill bytes; nvdisasm (triton's own) gives the SASS. Run with
TRITON_INTERPRET unset. tests/test_compile_reports.py runs a slice of it; the full sweep takes minutes.
"""
import argparse
import collections
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastbert.kernels import attention as A  # noqa: E402

_PTR = {"KEEP": "*i8", "KV_LEN": "*i32", "CU_SEQLENS": "*i32", "LSE": "*fp32", "DELTA": "*fp32", "SEED": "*i64"}
_SCALARS = {"qk_scale": "fp32", "sm_scale": "fp32", "dropout_p": "fp32"}
_INTS = {"H", "SEQLEN", "SEQ_BUCKET", "WORK_BUCKET"}
KERNELS = {"fwd": (A._attn_fwd_kernel, A._FWD_CONFIGS), "dkdv": (A._attn_bwd_dkdv_kernel, A._DKDV_CONFIGS),
           "dq": (A._attn_bwd_dq_kernel, A._DQ_CONFIGS)}
# BERT's variants: packed (unpadded) or padded with a key mask, dropout on (training) or off.
BERT_VARIANTS = [dict(VARLEN=True, HAS_MASK=False, CAUSAL=False, DROPOUT=d) for d in (False, True)] + \
                [dict(VARLEN=False, HAS_MASK=True, CAUSAL=False, DROPOUT=d) for d in (False, True)]
FULL_VARIANTS = [dict(VARLEN=v, HAS_MASK=m, CAUSAL=c, DROPOUT=d)
                 for v, m, c, d in itertools.product((False, True), (False, True), (False, True), (False, True))
                 if not (v and m)]
_SASS = re.compile(r"\b(HGMMA|HMMA|MEMBAR|RED|ATOM|FENCE|LDL|STL)[.\w]*")


def _signature(fn, consts, dtype):
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in _SCALARS:
            sig[name] = _SCALARS[name]
        elif name in _INTS or name.startswith("stride"):
            sig[name] = "i32"
        elif name == "DQ" and consts.get("ATOMIC_DQ"):
            sig[name] = "*fp32"
        else:
            sig[name] = _PTR.get(name, "*" + dtype)
    return sig


def compile_one(kernel: str, config, variant: dict, head_dim: int, dtype: str = "bf16", atomic_dq=True) -> dict:
    fn, _ = KERNELS[kernel]
    consts = dict(HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                  DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", **variant, **config.kwargs)
    if kernel == "dkdv":
        consts["ATOMIC_DQ"] = atomic_dq
    compiled = triton.compile(ASTSource(fn, _signature(fn, consts, dtype), consts), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    with tempfile.TemporaryDirectory() as d:
        ptx, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        ptxas = get_ptxas(90).path
        report = subprocess.run([ptxas, "-arch=sm_90a", "-v", ptx, "-o", os.devnull], capture_output=True,
                                text=True, check=True).stderr
        nvdisasm = os.path.join(os.path.dirname(ptxas), "nvdisasm")
        sass = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True).stdout
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, report)) else None  # noqa: E731
    ops = collections.Counter(m.group(1) for m in _SASS.finditer(sass))
    return {"kernel": kernel, "head_dim": head_dim, "dtype": dtype, **variant, **config.kwargs,
            **({"ATOMIC_DQ": atomic_dq} if kernel == "dkdv" else {}),
            "num_warps": config.num_warps, "num_stages": config.num_stages,
            "registers": num(r"Used (\d+) registers"), "stack": num(r"(\d+) bytes stack frame"),
            "spill_stores": num(r"(\d+) bytes spill stores"), "spill_loads": num(r"(\d+) bytes spill loads"),
            "sass": dict(ops)}


def candidate_configs(kernel: str, head_dim: int, seq_bucket: int = 512, atomic_dq: bool = True):
    """What the autotuner may pick: the config list after its own pruning."""
    fn, configs = KERNELS[kernel]
    extra = {"ATOMIC_DQ": atomic_dq} if kernel == "dkdv" else {}
    return A._prune(configs, {"HEAD_DIM": head_dim, "SEQ_BUCKET": seq_bucket, **extra})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    ap.add_argument("--head-dims", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--full", action="store_true", help="every variant (causal, padded without mask, ...)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many configs per kernel (0: all)")
    ap.add_argument("--json", help="write every row to this file (JSON lines)")
    ap.add_argument("--no-atomic-dq", action="store_true",
                    help="dK/dV kernel without the fused dQ atomics (the deterministic=True backward)")
    args = ap.parse_args(argv)
    variants = FULL_VARIANTS if args.full else BERT_VARIANTS
    out = open(args.json, "w") if args.json else None
    spills = 0
    print(f"{'kernel':5} {'d':>3} {'variant':28} {'config':22} {'regs':>4} {'spill':>5}  sass")
    for kernel, d in itertools.product(args.kernels, args.head_dims):
        configs = candidate_configs(kernel, d, atomic_dq=not args.no_atomic_dq)
        if args.limit:
            configs = configs[:args.limit]
        for config, variant in itertools.product(configs, variants if kernel != "dq" else variants[:2]):
            row = compile_one(kernel, config, variant, d, args.dtype, atomic_dq=not args.no_atomic_dq)
            spills += (row["spill_stores"] or 0) > 0
            flags = " ".join(k.lower() for k, v in variant.items() if v) or "-"
            cfg = f"{config.kwargs['BLOCK_M']}x{config.kwargs['BLOCK_N']} w{config.num_warps} s{config.num_stages}"
            print(f"{kernel:5} {d:3} {flags:28} {cfg:22} {row['registers']:4} {row['spill_stores']:5}  "
                  f"{json.dumps(row['sass'])}", flush=True)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
    print(f"configs that spill: {spills}")
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
