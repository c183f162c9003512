"""A corpus at a time: files of texts streamed to a folder of Parquet shards, resumable after a crash.

    from fastbert.corpus import encode_corpus
    encode_corpus(["docs/*.jsonl"], "vectors/", id_field="id", keep_fields=["title"])

or ``fastbert encode --input docs/ --output vectors/``. The modules, in the order a job uses them:

    sources.py   which files; their records, format by format; bad records named by file and line
    plan.py      the job cut into shards of input rows; reading one shard
    output.py    the output folder: job spec, lock, finished shards, manifest
    engine.py    batches of a shard; the local engine (reader -> tokenizer -> model -> writer threads)
    writer.py    the Parquet schema and the atomic write of a shard
    job.py       encode_corpus: the steps above, and the command line's entry
    ../ray.py    the same shards on a Ray cluster, and ``fastbert.ray.embed`` for Ray Datasets

Needs pyarrow (``pip install 'fastbert[corpus]'``); nothing here is imported by ``import fastbert``.
"""


def _require_pyarrow():
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise RuntimeError("fastbert encode --input needs pyarrow: pip install 'fastbert[corpus]'")


def encode_corpus(*args, **kwargs):
    _require_pyarrow()
    from .job import encode_corpus as run

    return run(*args, **kwargs)


encode_corpus.__doc__ = "See fastbert.corpus.job.encode_corpus."


def main(args) -> int:
    """``fastbert encode --input ...``."""
    _require_pyarrow()
    from .job import main as run

    return run(args)
