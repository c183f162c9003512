"""The ``fastbert`` command.

    fastbert encode "some text" "more text"   sentence embeddings + cosine-similarity table
    fastbert pretrain ...                      MLM + NSP pre-training      (fastbert.train)
    fastbert finetune --task cls|ner|qa ...    fine-tuning                 (fastbert.train)
    fastbert distill ...                       distillation into a smaller BERT (fastbert.train)
    fastbert bench ...                         the benchmark suite         (benchmarks/)
    fastbert serve [--model DIR] [--port 8080] an embedding server: OpenAI's and TEI's API (fastbert.serve)
"""
import argparse
import sys


TABLE_MAX = 10  # more texts than this: a summary instead of the full similarity table


def positive_int(text):
    """argparse type for a count (shared by every fastbert command)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _encode_parser(sub):
    p = sub.add_parser("encode", help="sentence embeddings (the model's sentence-transformers pipeline) and their "
                                      "cosine similarities")
    p.add_argument("texts", nargs="*", help="texts to embed (or --file)")
    p.add_argument("--file", help="read texts from this file, one per line ('-' for standard input); every line "
                                  "is one text, and a blank line is an error naming it")
    p.add_argument("--model", help="a local BERT / sentence-transformers directory (default: the embedded "
                                   "all-MiniLM-L6-v2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16", "int8"], default="auto",
                   help="model precision (default auto: bfloat16 on a CPU with AMX-BF16 or AVX512-BF16, float32 on "
                        "other CPUs, float16 on a GPU; int8 is refused, with the measurements: docs/cpu.md)")
    p.add_argument("--backend", choices=["auto", "torch", "triton", "cpu"], default="auto")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch's CPU threads: the model's on a CPU, the host-side ops' on a GPU (default: OMP_NUM_THREADS, "
                        "else one per physical core when the model runs on the CPU)")
    p.add_argument("--max-length", type=positive_int, default=None,
                   help="truncate texts to this many tokens (default: the model's max_seq_length)")
    p.add_argument("--no-normalize", action="store_true", help="skip the pipeline's Normalize module")
    p.add_argument("--dims", type=positive_int, default=8, help="embedding components printed per text")
    p.add_argument("--output", help="save the embeddings: .npy, .jsonl (one list per line) or .csv")
    p.add_argument("--no-table", action="store_true", help="print no similarity table")
    c = p.add_argument_group("a corpus to Parquet (fastbert.corpus; needs pyarrow: pip install 'fastbert[corpus]')")
    c.add_argument("--input", nargs="+", metavar="PATH",
                   help="files (.txt: a line is a text; .jsonl; .csv/.tsv; .parquet), globs or folders; with "
                        "--output DIR, the embeddings are written as Parquet shards there, resumably")
    c.add_argument("--text-field", help="the field holding the text (default: text)")
    c.add_argument("--id-field", help="a field copied to the output's 'id' column (default: the input position, "
                                      "always in 'row')")
    c.add_argument("--keep-fields", metavar="A,B", help="fields copied to the output as they are")
    c.add_argument("--shard-size", type=positive_int, default=10_000, help="input rows per Parquet shard")
    c.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="a bad record (malformed, no text, undecodable): stop naming it, or skip it and count it in "
                        "the manifest")
    c.add_argument("--overwrite", action="store_true", help="start again in an --output that holds another job")
    c.add_argument("--engine", choices=["local", "ray"], default="local", help="run here, or on Ray Data")
    c.add_argument("--ray-address", help="a Ray cluster to join (default: start a local Ray)")
    c.add_argument("--ray-workers", type=positive_int, help="encoder actors (default: one per GPU, else one per "
                                                              "--ray-cpus-per-worker CPUs)")
    c.add_argument("--ray-cpus-per-worker", type=positive_int, help="CPUs per encoder actor (default: 4, at most "
                                                                      "the cluster's)")
    return p


def _read_texts(args) -> list:
    texts = list(args.texts)
    if args.file:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
        with stream:
            for n, line in enumerate(stream, 1):
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip():
                    raise ValueError(f"{args.file}:{n} is a blank line: every line is one text (remove it, or put "
                                     "the text there), so that output row i stays input line i")
                texts.append(line)
    return texts


def _output_format(path) -> str:
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix not in ("npy", "jsonl", "csv"):
        raise ValueError(f"--output {path}: unknown format; use a .npy, .jsonl or .csv file name")
    return suffix


def _save(path, emb):
    import numpy as np

    suffix = _output_format(path)
    if suffix == "npy":
        np.save(path, emb)
    elif suffix == "jsonl":
        import json

        with open(path, "w", encoding="utf-8") as f:
            for row in emb.tolist():
                f.write(json.dumps(row) + "\n")
    else:
        np.savetxt(path, emb, delimiter=",", fmt="%.8g")


def encode_main(args) -> int:
    import os

    # The command needs no Trainer/PEFT: fastbert's stand-alone base classes start ~2-3 s faster than
    # transformers' PreTrainedModel (same numbers; see README "Hugging Face Trainer, PEFT, Auto classes").
    if "fastbert.configuration_bert" not in sys.modules:
        os.environ.setdefault("FASTBERT_NO_TRANSFORMERS", "1")
    if args.input is not None:  # a corpus to Parquet shards
        from .corpus import main as corpus_main

        return corpus_main(args)
    import torch

    from .encode import SentenceEncoder
    from .hardware import configure_threads

    if args.output:
        _output_format(args.output)  # an unknown extension fails before any work
    texts = _read_texts(args)
    if not texts:
        print("fastbert encode: give at least one text (or --file)", file=sys.stderr)
        return 2
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise ValueError(f"--device {args.device!r} is not a device ({e}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is visible on this machine; use --device cpu")
    threads = configure_threads(args.threads) if device.type == "cpu" or args.threads else None
    encoder = SentenceEncoder(args.model, device=device, dtype=args.dtype, backend=args.backend)
    if args.backend == "triton":
        encoder.backend(device)  # raises a clear error where the Triton path cannot run
    if args.max_length:
        encoder.max_seq_length = min(args.max_length, encoder.model.config.max_position_embeddings)
    emb = encoder._embed(texts, args.batch_size, show_progress_bar=bool(args.file) and sys.stderr.isatty(),
                         normalize_module=not args.no_normalize).float().cpu()
    normalized = encoder.spec["normalize"] and not args.no_normalize
    print(f"model: {encoder.model_dir}  device: {device}  "
          f"dtype: {str(encoder.dtype).replace('torch.', '')} ({encoder.dtype_reason})  "
          f"backend: {encoder.backend(device)}  tokenizer: {encoder.tokenizer_name}  "
          f"pooling: {encoder.spec['pooling']}  max_seq_length: {encoder.max_seq_length}"
          + (f"  cpu: {threads}" if threads else ""))
    print(f"embeddings: {emb.shape[0]} x {emb.shape[1]}" + (" (L2-normalised)" if normalized else ""))
    shown = texts if len(texts) <= TABLE_MAX else texts[:TABLE_MAX]
    width = max(len(_clip(t)) for t in shown)
    for i, t in enumerate(shown):
        comps = " ".join(f"{x:+.4f}" for x in emb[i, : args.dims].tolist())
        print(f"  [{i}] {_clip(t):<{width}}  [{comps} ...]")
    if len(texts) > len(shown):
        print(f"  ... {len(texts) - len(shown)} more")
    if not args.no_table:
        normed = torch.nn.functional.normalize(emb, dim=-1)
        sim = normed @ normed.T
        if len(texts) <= TABLE_MAX:
            print("cosine similarity:")
            print("       " + " ".join(f"[{j}]".rjust(7) for j in range(len(texts))))
            for i in range(len(texts)):
                print(f"  [{i}]  " + " ".join(f"{sim[i, j].item():7.4f}" for j in range(len(texts))))
        else:
            n = len(texts)
            upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
            pairs = sim[upper]
            i, j = upper.nonzero()[pairs.argmax()].tolist()
            print(f"cosine similarity of {n} texts (the table is printed up to {TABLE_MAX}; --no-table to skip "
                  f"this): mean {pairs.mean():.4f}, min {pairs.min():.4f}, max {pairs.max():.4f} (texts [{i}] and "
                  f"[{j}])")
    if args.output:
        _save(args.output, emb.numpy())
        print(f"saved {args.output}")
    return 0


def _clip(text, n=48):
    text = text.replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommands that live in their own modules parse their own arguments.
    if argv and argv[0] in ("pretrain", "finetune", "distill"):
        from .train import cli as train_cli

        return train_cli.main(argv)
    if argv and argv[0] == "bench":
        from .benchmarks.__main__ import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "serve":
        from .serve.cli import main as serve_main

        return serve_main(argv[1:])

    parser = argparse.ArgumentParser(prog="fastbert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from importlib.metadata import PackageNotFoundError, version

    try:
        parser.add_argument("--version", action="version", version=f"fastbert {version('fastbert')}")
    except PackageNotFoundError:
        parser.add_argument("--version", action="version", version="fastbert (not installed)")
    sub = parser.add_subparsers(dest="command", required=True)
    _encode_parser(sub)
    sub.add_parser("pretrain", help="MLM + NSP pre-training (fastbert pretrain --help)")
    sub.add_parser("finetune", help="fine-tuning: --task cls|ner|qa (fastbert finetune --help)")
    sub.add_parser("distill", help="distil a teacher into a smaller BERT (fastbert distill --help)")
    sub.add_parser("bench", help="run the benchmark suite (fastbert bench --help)")
    sub.add_parser("serve", help="an embedding server with OpenAI's and TEI's API (fastbert serve --help)")
    args = parser.parse_args(argv)
    if args.command == "encode":
        try:
            return encode_main(args)
        except (FileNotFoundError, ValueError, NotImplementedError, RuntimeError) as e:
            print(f"fastbert encode: error: {e}", file=sys.stderr)
            return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
