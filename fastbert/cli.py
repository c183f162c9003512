"""The ``fastbert`` command.

    fastbert encode "some text" "more text"   sentence embeddings + cosine-similarity table
    fastbert pretrain ...                      MLM + NSP pre-training      (fastbert.train)
    fastbert finetune --task cls|ner|qa ...    fine-tuning                 (fastbert.train)
    fastbert distill ...                       distillation into a smaller BERT (fastbert.train)
    fastbert bench ...                         the benchmark suite         (benchmarks/)
"""
import argparse
import sys


def _encode_parser(sub):
    p = sub.add_parser("encode", help="sentence embeddings (mean pooling) and their cosine similarities")
    p.add_argument("texts", nargs="*", help="texts to embed (or --file)")
    p.add_argument("--file", help="read texts from this file, one per line ('-' for standard input)")
    p.add_argument("--model", help="a local BERT directory (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="model dtype (default: float32 on CPU, float16 on GPU)")
    p.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--no-normalize", action="store_true", help="print raw mean-pooled vectors")
    p.add_argument("--dims", type=int, default=8, help="embedding components printed per text")
    p.add_argument("--output", help="also save the embeddings to this .npy file")
    return p


def encode_main(args) -> int:
    import numpy as np
    import torch

    from .encode import SentenceEncoder

    texts = list(args.texts)
    if args.file:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
        with stream:
            texts += [line.rstrip("\n") for line in stream if line.strip()]
    if not texts:
        print("fastbert encode: give at least one text (or --file)", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    encoder = SentenceEncoder(args.model, device=device, dtype=dtype, backend=args.backend)
    emb = encoder.encode(texts, batch_size=args.batch_size, max_length=args.max_length,
                         normalize=not args.no_normalize)
    emb = emb.float().cpu()
    print(f"model: {encoder.model_dir}  device: {device}  dtype: {str(dtype).replace('torch.', '')}  "
          f"backend: {encoder.backend(device)}  tokenizer: {encoder.tokenizer_name}")
    print(f"embeddings: {emb.shape[0]} x {emb.shape[1]}" + ("" if args.no_normalize else " (L2-normalised)"))
    width = max(len(_clip(t)) for t in texts)
    for i, t in enumerate(texts):
        comps = " ".join(f"{x:+.4f}" for x in emb[i, : args.dims].tolist())
        print(f"  [{i}] {_clip(t):<{width}}  [{comps} ...]")
    normed = torch.nn.functional.normalize(emb, dim=-1)
    sim = normed @ normed.T
    print("cosine similarity:")
    print("       " + " ".join(f"[{j}]".rjust(7) for j in range(len(texts))))
    for i in range(len(texts)):
        print(f"  [{i}]  " + " ".join(f"{sim[i, j].item():7.4f}" for j in range(len(texts))))
    if args.output:
        np.save(args.output, emb.numpy())
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
        import os

        if os.path.isfile(os.path.join("benchmarks", "__main__.py")) and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # a source checkout: benchmarks/ is not installed with fastbert
        try:
            from benchmarks.__main__ import main as bench_main
        except ImportError:
            print("fastbert bench runs from a source checkout: cd into the fastbert repository "
                  "(it holds benchmarks/) and run `python -m benchmarks`", file=sys.stderr)
            return 2
        return bench_main(argv[1:])

    parser = argparse.ArgumentParser(prog="fastbert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _encode_parser(sub)
    sub.add_parser("pretrain", help="MLM + NSP pre-training (fastbert pretrain --help)")
    sub.add_parser("finetune", help="fine-tuning: --task cls|ner|qa (fastbert finetune --help)")
    sub.add_parser("distill", help="distil a teacher into a smaller BERT (fastbert distill --help)")
    sub.add_parser("bench", help="run the benchmark suite (fastbert bench --help)")
    args = parser.parse_args(argv)
    if args.command == "encode":
        try:
            return encode_main(args)
        except (FileNotFoundError, ValueError) as e:
            print(f"fastbert encode: {e}", file=sys.stderr)
            return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
