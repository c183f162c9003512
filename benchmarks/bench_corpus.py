"""Benchmark: the corpus job (``fastbert encode --input``, local engine) against in-process
``SentenceEncoder.encode`` on the same texts with the same encoder, and the job's peak memory at 1M lines.

Throughput. Texts: paragraphs of the plain-text documents under /usr/share/doc (what bench_encode uses),
written one per line to a .txt file. Timed round-robin by ``timer.time_round_robin`` (one call each per
round, the order rotating, so a drifting machine load falls on both): ``encode(texts)`` (texts already in
memory, embeddings returned as numpy), and ``encode_corpus([file], fresh_folder)`` (planning pass, reading,
tokenizing, the model, Parquet shards written and renamed, manifest), both on one loaded
``SentenceEncoder``. Before timing, the job's vectors are checked against ``encode``'s (max abs difference
<= 1e-4, else nothing is timed). The ratio is job texts/s over encode texts/s in the same round;
the headline is the median of those paired ratios.

Memory. ``--rss-lines N,...``: a fresh process per size runs the job on N short lines with a tiny random BERT
(hidden 32, 1 layer, MiniLM's vocabulary and pipeline; the model is not the point: what grows with the corpus
is) and reports its peak RSS (``ru_maxrss``); a size with the real MiniLM (``--rss-minilm-lines``) says what
the model adds. These processes run one torch thread (``OMP_NUM_THREADS=1``: memory, not speed, is measured).

    python -m fastbert.benchmarks.bench_corpus --texts 2000 --rounds 3 --shard-size 500
    python -m fastbert.benchmarks.bench_corpus --rss-lines 100000,1000000 --rss-minilm-lines 20000
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastbert.benchmarks.common import _corpus_paragraphs, environment
from fastbert.benchmarks.timer import time_round_robin


def throughput(n_texts=2000, rounds=3, batch_size=32, shard_sizes=(500,), dtype=None, model_dir=None):
    import numpy as np
    import pyarrow.dataset as pads

    from fastbert import SentenceEncoder
    from fastbert.corpus import encode_corpus

    texts = _corpus_paragraphs(Path("/usr/share/doc"), max_files=400, max_paragraphs=n_texts)
    enc = SentenceEncoder(model_dir, device="cpu", dtype=dtype)
    work = Path(tempfile.mkdtemp(prefix="bench_corpus_"))
    try:
        src = work / "texts.txt"
        src.write_text("".join(t + "\n" for t in texts), encoding="utf-8")

        def job(shard_size, out):
            shutil.rmtree(out, ignore_errors=True)
            encode_corpus([str(src)], out, encoder=enc, batch_size=batch_size, shard_size=shard_size,
                          progress=False, log=lambda *a: None)

        want = enc.encode(texts, batch_size=batch_size)
        for s in shard_sizes:  # check before timing
            job(s, work / "out")
            t = pads.dataset(str(work / "out"), format="parquet").to_table()
            got = t.column("embedding").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
            diff = float(np.abs(got - want).max())
            min_cos = float((got * want).sum(1).min())  # both L2-normalised
            # fp32: the same numbers; bf16: a batch's rows go through oneDNN kernels picked by the batch's
            # shape, so a text batched with other neighbours rounds differently (cosine, not bits)
            ok = diff <= 1e-4 if enc.model.dtype == torch.float32 else min_cos >= 0.9999
            if t.column("row").to_pylist() != list(range(len(texts))) or not ok:
                raise AssertionError(f"shard size {s}: the job's output differs from encode's "
                                     f"(max abs {diff:.2e}, min cos {min_cos:.6f}): not timing")
        calls = {"encode": lambda: enc.encode(texts, batch_size=batch_size)}
        calls.update({f"corpus_shard{s}": (lambda s=s: job(s, work / "out")) for s in shard_sizes})
        timings = time_round_robin(calls, warmup=0, reps=rounds, max_s=math.inf)  # every call ends on the host
        times = {k: [t / 1e3 for t in v.times_ms] for k, v in timings.items()}
        med = {k: v.median_ms / 1e3 for k, v in timings.items()}
        ratios = {k: [a / b for a, b in zip(times["encode"], v)] for k, v in times.items() if k != "encode"}
        return {"texts": len(texts), "chars": sum(map(len, texts)), "batch_size": batch_size,
                "dtype": str(enc.model.dtype), "seconds": times,
                "texts_per_s": {k: len(texts) / v for k, v in med.items()},
                "job_over_encode_per_round": ratios,
                # the median of the paired (same-round) ratios: a load spike falls on one round, not on one side
                "job_over_encode_median": {k: statistics.median(v) for k, v in ratios.items()},
                "job_over_encode_of_medians": {k: med["encode"] / med[k] for k in ratios},
                "load_avg": os.getloadavg(), "environment": environment(torch.device("cpu"))}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tiny_model(dest: Path) -> Path:
    """A 1-layer, hidden-32 BERT with random weights and MiniLM's vocabulary and sentence-transformers files."""
    from fastbert import BertConfig, BertModel
    from fastbert.assets import default_model_dir

    minilm = default_model_dir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "modules.json",
                 "sentence_bert_config.json"):
        shutil.copy(minilm / name, dest / name)
    shutil.copytree(minilm / "1_Pooling", dest / "1_Pooling")
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(dest)
    return dest


def peak_rss(lines: int, model_dir, work: Path, batch_size=64, threads=1):
    """Peak RSS (MiB) of a fresh ``fastbert encode --input`` process over ``lines`` short lines."""
    src = work / f"lines_{lines}.txt"
    if not src.exists():
        import numpy as np

        words = np.array("the of science cookie kernel theory quantum apple river idea music fox".split())
        rng = np.random.default_rng(0)
        with open(src, "w", encoding="utf-8") as f:
            for start in range(0, lines, 100_000):
                n = min(100_000, lines - start)
                picks = words[rng.integers(0, len(words), (n, 6))]
                f.write("".join(" ".join(p) + "\n" for p in picks))
    out = work / f"out_{lines}"
    shutil.rmtree(out, ignore_errors=True)
    code = ("import resource, sys; from fastbert.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, "encode", "--input", str(src), "--output", str(out),
                        "--model", str(model_dir), "--batch-size", str(batch_size), "--dtype", "float32"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    kib = int(next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("MAXRSS_KIB")))
    manifest = json.loads((out / "_manifest.json").read_text())
    size = sum(p.stat().st_size for p in out.glob("part-*.parquet"))
    shutil.rmtree(out, ignore_errors=True)
    return {"lines": lines, "input_mib": round(src.stat().st_size / 2**20, 1), "peak_rss_mib": round(kib / 1024, 1),
            "rows": manifest["rows"], "shards": len(manifest["shards"]), "output_mib": round(size / 2**20, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def memory(sizes, minilm_lines=None):
    from fastbert.assets import default_model_dir

    work = Path(tempfile.mkdtemp(prefix="bench_corpus_rss_"))
    try:
        (work / "tiny").mkdir()
        tiny = _tiny_model(work / "tiny")
        res = {"tiny_model": [peak_rss(n, tiny, work) for n in sizes]}
        if minilm_lines:
            res["minilm"] = [peak_rss(n, default_model_dir(), work) for n in minilm_lines]
        res["load_avg"] = os.getloadavg()
        res["environment"] = environment(torch.device("cpu"))
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", default="500", help="comma list of shard sizes to time")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: the encoder's")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--rss-lines", help="comma list of corpus sizes (lines) for the peak-RSS runs")
    ap.add_argument("--rss-minilm-lines", help="comma list of sizes for peak RSS with the real MiniLM")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    res = {}
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_throughput:
        res["throughput"] = throughput(args.texts, args.rounds, args.batch_size,
                                       tuple(int(s) for s in args.shard_size.split(",")),
                                       getattr(torch, args.dtype) if args.dtype else None)
        t = res["throughput"]
        print(json.dumps({k: t[k] for k in ("texts", "dtype", "texts_per_s", "job_over_encode_median",
                                            "job_over_encode_per_round", "load_avg")}, default=str))
        print(f"torch threads {torch.get_num_threads()}, {t['environment']['cpu_model']}, load {t['load_avg']}")
    if args.rss_lines:
        res["memory"] = memory([int(n) for n in args.rss_lines.split(",")],
                               [int(n) for n in args.rss_minilm_lines.split(",")] if args.rss_minilm_lines else None)
        print(json.dumps({k: v for k, v in res["memory"].items() if k != "environment"}, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
