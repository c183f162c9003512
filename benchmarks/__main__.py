"""The benchmark runner's command line: ``fastbert bench`` (``python -m fastbert.benchmarks``; in a checkout also
``python -m benchmarks``).

    python -m benchmarks                    gpu suite when CUDA is there, else the cpu suite
    python -m benchmarks --suite cpu --quick
    python -m benchmarks --only inference   one section: inference, training, pretraining, ops, tokenizer
    python -m benchmarks --out /tmp/bench --update-readme

Prints a table, writes ``<stem>.json`` (environment + raw numbers), ``<stem>.md`` (tables) and PNG plots of
the speed-ups into ``--out`` (default ``benchmarks/results/``). See benchmarks/README.md for the columns.
What is measured: plan.py; how: runner.py (timing: timer.py); the files: report.py.
"""
import argparse
import os
import sys
from pathlib import Path

import torch

from fastbert.benchmarks.common import REPO_ROOT
from fastbert.benchmarks.plan import SECTIONS

# In a source checkout the results go beside the benchmarks (benchmarks/results/, committed); an installed
# fastbert writes them under the current directory, never into site-packages.
DEFAULT_OUT = (Path(__file__).resolve().parent / "results" if (REPO_ROOT / ".git").exists()
               else Path.cwd() / "fastbert-bench-results")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="fastbert bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["cpu", "gpu", "all"], default=None,
                   help="cpu: the PyTorch path vs Hugging Face on CPU; gpu: every provider on CUDA; all: both "
                        "(default: gpu when CUDA is available, else cpu)")
    p.add_argument("--quick", action="store_true", help="a small subset with fewer calls (smoke run)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go (default: %(default)s)")
    p.add_argument("--only", default=None, help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--models", default=None, help="comma-separated subset of the plan's models "
                                                   "(minilm, bert-base, bert-large; tiny replaces them all)")
    p.add_argument("--providers", default=None, help="comma-separated providers (default: all)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per measurement")
    p.add_argument("--compile-models", default="bert-base",
                   help="models for which torch.compile(HF) is measured on GPU (compiling every shape takes "
                        "minutes; default: %(default)s)")
    p.add_argument("--compile-cpu", action="store_true", help="include torch.compile on CPU (slow to compile)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a CPU shared with other jobs, 1 thread gives "
                        "far steadier timings than threads that wait for each other at every op")
    p.add_argument("--triton-interpret", action="store_true",
                   help="CPU only: run the Triton providers under the Triton interpreter, to check the GPU "
                        "path of the runner (timings are meaningless and marked so)")
    p.add_argument("--no-interleave", action="store_true",
                   help="CPU: time the providers one after another (as on GPU) instead of round-robin")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--update-readme", action="store_true",
                   help="rewrite the section between <!-- bench:start --> and <!-- bench:end --> of README.md")
    p.add_argument("--tag", default=None, help="extra word in the results file names")
    p.add_argument("--render", type=Path, default=None,
                   help="measure nothing: rewrite the tables and plots (and README with --update-readme) of "
                        "this results JSON, next to it")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from fastbert.benchmarks import providers as P
    from fastbert.benchmarks.report import read_results, write_report
    from fastbert.benchmarks.runner import Options, run_suite

    readme = REPO_ROOT / "README.md" if args.update_readme else None
    if args.render:  # measure nothing: the report of a results JSON, next to it
        write_report(read_results(args.render), Path(args.render).with_suffix(""), plots=not args.no_plots,
                     with_json=False, readme=readme)
        return 0
    sections = args.only.split(",") if args.only else list(SECTIONS)
    for s in sections:
        if s not in SECTIONS:
            raise SystemExit(f"--only: unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    if args.triton_interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # read by fastbert.ops on every call
        P.INTERPRET_PROVIDERS[:] = [True]
    if args.threads:
        torch.set_num_threads(args.threads)
    has_cuda = torch.cuda.is_available()
    suite = args.suite or ("gpu" if has_cuda else "cpu")
    if suite in ("gpu", "all") and not has_cuda:
        print("--suite gpu needs a CUDA device; none is visible here", file=sys.stderr)
        return 2
    opts = Options(providers=args.providers.split(",") if args.providers else list(P.PROVIDERS), out=args.out,
                   quick=args.quick, models=args.models, reps=args.reps, compile_models=args.compile_models.split(","),
                   compile_cpu=args.compile_cpu, interleave=not args.no_interleave, plots=not args.no_plots,
                   readme=readme, tag=args.tag, triton_interpret=args.triton_interpret)
    status = 0
    for s in (["cpu", "gpu"] if suite == "all" else [suite]):
        status |= run_suite(s, opts, sections)
    return status


if __name__ == "__main__":
    sys.exit(main())
