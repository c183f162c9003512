"""``fastbert serve``: arguments, the encoder, uvicorn, and a clean exit on SIGTERM/SIGINT.

    fastbert serve                                   # the embedded all-MiniLM-L6-v2 on 127.0.0.1:8080
    fastbert serve --model DIR --port 9000 --api-key KEY
"""
import argparse
import os
import signal
import sys

from ..cli import positive_int

DESCRIPTION = """An embedding server for a sentence-transformers / BERT directory: OpenAI's POST /v1/embeddings,
TEI's POST /embed and POST /tokenize, GET /health, /info and /metrics (Prometheus). SIGTERM or Ctrl-C: stops
accepting, finishes every admitted request, exits 0.

    fastbert serve                                   # the embedded all-MiniLM-L6-v2 on 127.0.0.1:8080
    FASTBERT_API_KEY=KEY fastbert serve --model DIR --port 9000
"""
MISSING_EXTRA = ("fastbert serve needs the 'serve' extra (uvicorn, starlette, prometheus-client): "
                 "pip install 'fastbert[serve]'")


def build_parser(parser=None):
    p = parser or argparse.ArgumentParser(prog="fastbert serve", description=DESCRIPTION,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a local BERT / sentence-transformers directory (default: the embedded "
                                   "all-MiniLM-L6-v2)")
    p.add_argument("--model-name", help="the 'model' name in answers and /info (default: the directory's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                       "0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16", "int8"], default="auto",
                   help="model precision (default auto: bfloat16 on a CPU with AMX-BF16 or AVX512-BF16, float32 on "
                        "other CPUs, float16 on a GPU; int8 is refused, with the measurements: docs/cpu.md)")
    p.add_argument("--backend", choices=["auto", "torch", "triton", "cpu"], default="auto")
    p.add_argument("--api-key", default=os.environ.get("FASTBERT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every route but /health and /metrics (default: "
                        "$FASTBERT_API_KEY, which keeps the key out of the process list; else no key)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=16384,
                   help="token budget of one model batch (packed: no padding); queued inputs are batched up to it, "
                        "and a request with more tokens is split over several batches (default 16384)")
    p.add_argument("--max-concurrent-requests", type=positive_int, default=512,
                   help="inputs admitted at once (queued or running); a request that would pass it gets 429 at "
                        "once (default 512)")
    p.add_argument("--max-client-batch-size", type=positive_int, default=256,
                   help="inputs per request; more gets 413 (default 256)")
    p.add_argument("--payload-limit", type=positive_int, default=2_000_000,
                   help="request body size in bytes; more gets 413 (default 2000000)")
    p.add_argument("--tokenization-workers", type=positive_int, default=2,
                   help="threads tokenizing requests (default 2)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch's CPU threads: the model's on a CPU, the host-side ops' on a GPU (default: "
                        "OMP_NUM_THREADS, else one per physical core)")
    p.add_argument("--cors-allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow cross-origin browser requests from ORIGIN (repeatable; default: no CORS headers)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn

        from .app import ServerConfig, create_app
        from .batching import model_thread
    except ImportError as e:
        print(f"{MISSING_EXTRA} ({e})", file=sys.stderr)
        return 1
    # The server needs no Trainer/PEFT: fastbert's stand-alone base classes start faster (as `fastbert encode`).
    if "fastbert.configuration_bert" not in sys.modules:
        os.environ.setdefault("FASTBERT_NO_TRANSFORMERS", "1")
    import torch

    from ..encode import SentenceEncoder

    config = ServerConfig(max_batch_tokens=args.max_batch_tokens, max_concurrent_requests=args.max_concurrent_requests,
                          max_client_batch_size=args.max_client_batch_size, payload_limit=args.payload_limit,
                          api_key=args.api_key, cors_allow_origins=args.cors_allow_origin,
                          tokenization_workers=args.tokenization_workers, model_name=args.model_name)
    try:
        config.check()
        if args.device and torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA device is visible on this machine; use --device cpu")
        if args.threads or not args.device or torch.device(args.device).type == "cpu":
            from fastbert.hardware import configure_threads

            configure_threads(args.threads)
        # the model loaded on the thread that will run it, so that no other thread opens an OpenMP team
        # (fastbert/serve/batching.py says why)
        thread = model_thread()
        encoder = thread.submit(SentenceEncoder, args.model, device=args.device, dtype=args.dtype,
                                backend=args.backend).result()
        app = create_app(encoder, config, thread)
    except (FileNotFoundError, ValueError, NotImplementedError, RuntimeError) as e:
        print(f"fastbert serve: error: {e}", file=sys.stderr)
        return 1
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           access_log=False, timeout_graceful_shutdown=None))
    # uvicorn catches SIGTERM/SIGINT, stops accepting, finishes every in-flight request and runs the lifespan
    # shutdown, then re-raises the signal to the handler that was there before it: a no-op here, so that a
    # graceful stop exits 0 (not 143, nor a KeyboardInterrupt traceback).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
