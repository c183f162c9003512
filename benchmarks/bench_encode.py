"""Benchmark: sentence embeddings, fastbert.SentenceEncoder vs sentence-transformers, same model directory,
same texts, one run, timed round-robin (one call each per round, the order alternating, so a drifting machine
load falls on both).

Texts: paragraphs of the plain-text documents under /usr/share/doc (real mixed-length English prose, what
the benchmark suite's corpus workloads use). Before timing, the two providers' embeddings are compared
(cosine >= 0.9999 on every text, else nothing is timed). Throughput counts texts per second of ``encode``
(tokenization included), CPU by default, fp32.

    python -m fastbert.benchmarks.bench_encode --texts 400 --rounds 3

``--peers``: the CPU comparison with ONNX Runtime, OpenVINO, CTranslate2 and fastembed instead
(``bench_cpu_peers.py``; its own options follow, see ``--peers --help``).
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

from fastbert.benchmarks.common import _corpus_paragraphs, environment
from fastbert.benchmarks.timer import time_round_robin


def run(device="cpu", n_texts=400, rounds=3, batch_size=32, model_dir=None):
    from sentence_transformers import SentenceTransformer

    from fastbert import SentenceEncoder
    from fastbert.assets import default_model_dir

    model_dir = model_dir or default_model_dir()
    texts = _corpus_paragraphs(Path("/usr/share/doc"), max_files=400, max_paragraphs=n_texts)
    ours = SentenceEncoder(model_dir, device=device, dtype=torch.float32)
    theirs = SentenceTransformer(str(model_dir), device=device)
    a = ours.encode(texts, batch_size=batch_size, convert_to_tensor=True).cpu()
    b = theirs.encode(texts, batch_size=batch_size, convert_to_tensor=True).cpu()
    cos = torch.nn.functional.cosine_similarity(a, b)
    if cos.min() < 0.9999:
        raise AssertionError(f"embeddings differ from sentence-transformers' (min cosine {cos.min():.6f}): not timing")
    calls = {"fastbert": lambda: ours.encode(texts, batch_size=batch_size),
             "sentence-transformers": lambda: theirs.encode(texts, batch_size=batch_size)}
    timings = time_round_robin(calls, warmup=0, reps=rounds, max_s=math.inf)  # encode ends on the host
    times = {k: [t / 1e3 for t in v.times_ms] for k, v in timings.items()}
    med = {k: v.median_ms / 1e3 for k, v in timings.items()}
    return {"texts": len(texts), "chars": sum(map(len, texts)), "batch_size": batch_size, "device": str(device),
            "torch_threads": torch.get_num_threads(), "min_cosine": float(cos.min()),
            "seconds": times, "texts_per_s": {k: len(texts) / v for k, v in med.items()},
            "speedup": med["sentence-transformers"] / med["fastbert"], "load_avg": os.getloadavg(),
            "environment": environment(torch.device(device))}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--peers" in argv:
        from fastbert.benchmarks.bench_cpu_peers import main as peers_main

        return peers_main([a for a in argv if a != "--peers"])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", action="store_true",
                    help="time the CPU peers (ONNX Runtime, OpenVINO, CTranslate2, fastembed) instead")
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    res = run(args.device, args.texts, args.rounds, args.batch_size)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: res[k] for k in ("texts", "chars", "min_cosine", "texts_per_s", "speedup", "load_avg")},
                     default=str))


if __name__ == "__main__":
    main()
