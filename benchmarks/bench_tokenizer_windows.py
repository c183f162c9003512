"""is_split_into_words and QA windows (stride + return_overflowing_tokens): fastbert vs transformers'
BertTokenizerFast, CPU time of one call each on the same inputs (2,000 paragraphs of the tokenizer corpus
over 400 characters; questions = their first 80 characters, contexts = their first 3,000; words = the
paragraphs split on spaces). One thread on both sides (TOKENIZERS_PARALLELISM=false, num_threads=1).

    python -m fastbert.benchmarks.bench_tokenizer_windows
"""
import os
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"


def run(n=2000):
    from fastbert.benchmarks import bench_tokenizer as b
    import transformers

    from fastbert.assets import default_model_dir
    from fastbert.tokenization_bert import BertTokenizer

    texts = [t for t in b._load_corpus(None, limit_mb=6) if len(t) > 400][:n]
    qs, ctx, words = [t[:80] for t in texts], [t[:3000] for t in texts], [t.split() for t in texts]
    d = default_model_dir()
    hf, fb = transformers.BertTokenizerFast.from_pretrained(d), BertTokenizer.from_pretrained(d, num_threads=1)
    qa = dict(truncation="only_second", max_length=384, stride=128, return_overflowing_tokens=True,
              return_offsets_mapping=True, padding="max_length")
    ner = dict(is_split_into_words=True, truncation=True, max_length=512, padding=True, return_offsets_mapping=True)
    res = {"examples": len(texts)}
    for what, args, kw in (("qa_windows", (qs, ctx), qa), ("split_into_words", (words,), ner)):
        ref = hf(*args, **kw)
        got = fb(*args, **kw)
        assert dict(ref) == dict(got), what  # the same output first
        for name, tok in (("hf", hf), ("fastbert", fb)):
            t0 = time.process_time()
            tok(*args, **kw)
            res[f"{what}_{name}_ms"] = round(1e3 * (time.process_time() - t0), 1)
        res[f"{what}_rows"] = len(ref["input_ids"])
        res[f"{what}_speedup"] = round(res[f"{what}_hf_ms"] / res[f"{what}_fastbert_ms"], 2)
    return res


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
