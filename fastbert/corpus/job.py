"""A corpus job from start to manifest: ``encode_corpus``, and ``main`` for ``fastbert encode --input``.

    inputs -> plan (every record checked, shards cut) -> output folder taken (new, resumed or refused)
           -> the shards not yet written, on the local engine or on Ray -> manifest
"""
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from ..encode import resolve_dtype
from .output import SPEC_FORMAT, OutputDir
from .plan import make_plan, read_shard
from .sources import FORMATS, Fields, InputError, check_fields, expand_inputs
from .writer import MAX_SKIPPED_NOTED, output_schema, shard_facts, shard_table, write_shard

ON_ERROR = ("stop", "skip")
DEFAULT_SHARD_SIZE = 10_000


def model_facts(model_dir, max_length: Optional[int] = None) -> Dict:
    """``hidden_size``, ``max_seq_length`` and whether the pipeline normalises, as ``SentenceEncoder`` sets
    them, read from the directory without loading the weights (the Ray driver has no model)."""
    from ..encode import sentence_pipeline

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    limit = config["max_position_embeddings"]
    spec = sentence_pipeline(model_dir)
    max_seq = min(spec["max_seq_length"] or limit, limit)
    if max_length:
        max_seq = min(max_length, limit)
    return {"hidden_size": config["hidden_size"], "max_seq_length": max_seq, "normalize": spec["normalize"]}


def encode_corpus(inputs: Sequence[str], output, *, text_field: Optional[str] = None, id_field: Optional[str] = None,
                  keep_fields: Sequence[str] = (), model=None, device=None, dtype=None, backend: str = "auto",
                  batch_size: int = 32, max_length: Optional[int] = None, normalize: bool = True,
                  shard_size: int = DEFAULT_SHARD_SIZE, on_error: str = "stop", overwrite: bool = False,
                  engine: str = "local", ray_address: Optional[str] = None, ray_workers: Optional[int] = None,
                  ray_cpus_per_worker: Optional[float] = None, encoder=None, progress: Optional[bool] = None,
                  log=print) -> Dict:
    """Embed every record of ``inputs`` (files, globs, folders) into Parquet shards under ``output`` and return
    the manifest. A second call with the same job resumes it (and returns at once when it is complete).
    ``encoder``: a ``SentenceEncoder`` to use (local engine) instead of loading ``model``."""
    from ..assets import MISSING_MODEL_HELP, default_model_dir
    from .output import model_identity

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: use one of {ON_ERROR}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine={engine!r}: use 'local' or 'ray'")
    if engine == "ray" and encoder is not None:
        raise ValueError("encoder= is for the local engine: each Ray worker loads its own from model=")
    if engine != "ray" and (ray_address or ray_workers or ray_cpus_per_worker):
        raise ValueError("--ray-address, --ray-workers and --ray-cpus-per-worker need --engine ray")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    fields = Fields(text_field or "text", id_field, tuple(keep_fields))
    files, ignored = expand_inputs(inputs, exclude=str(output))
    if ignored:
        log(f"ignored {len(ignored)} file(s) of other formats under the inputs (e.g. {ignored[0]}); fastbert reads "
            f"{', '.join(FORMATS)}")
    check_fields(files, fields, text_field_given=text_field is not None)
    if encoder is not None:
        given = [k for k, v in (("model", model), ("device", device), ("dtype", dtype), ("max_length", max_length))
                 if v is not None]
        if given:
            raise ValueError(f"encoder= is given: {', '.join(given)} would be ignored (they are the encoder's)")
        model_dir, dtype = encoder.model_dir, encoder.model.dtype
    else:
        model_dir = model or default_model_dir()
        if model_dir is None:
            raise FileNotFoundError(MISSING_MODEL_HELP)
        # The precision the job runs in, decided once here (so every shard and every Ray worker uses the same,
        # and resuming on a CPU with another default is refused, not mixed): "auto" resolves for the device.
        dtype, _ = resolve_dtype(dtype, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    facts = model_facts(model_dir, max_length)
    if encoder is not None:
        facts["max_seq_length"] = encoder.max_seq_length
    spec = {"format": SPEC_FORMAT, "model": model_identity(model_dir),
            "inputs": [f.identity() for f in files], "text_field": fields.text, "id_field": fields.id,
            "keep_fields": list(fields.keep), "shard_size": shard_size, "on_error": on_error,
            "dtype": str(dtype).replace("torch.", ""),
            "max_seq_length": facts["max_seq_length"], "normalize": bool(normalize and facts["normalize"])}

    t0 = time.perf_counter()
    shards, total, bad = make_plan(files, fields, shard_size, on_error)
    if total == 0:
        raise InputError("the inputs hold no record")
    out = OutputDir(output)
    try:
        if out.open(spec, overwrite):
            manifest = json.loads((out.path / "_manifest.json").read_text(encoding="utf-8"))
            log(f"{out.path}: this job is already complete ({manifest['rows']} rows); nothing to do "
                "(--overwrite starts it again)")
            return manifest
        if bad:
            log(f"{bad} bad record(s) in the inputs will be skipped (--on-error skip) and listed in the manifest")
        done = out.done(shards)
        pending = [s for s in shards if s.index not in done]
        schema = output_schema(files, fields, facts["hidden_size"])
        if done:
            log(f"{out.path}: resuming: {len(done)} of {len(shards)} shards already written")
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=sum(s.rows for s in shards if s.index in done), unit="text",
                   desc="fastbert encode", disable=None if progress is None else not progress, file=sys.stderr,
                   smoothing=0.05, dynamic_ncols=True)
        with bar:
            if engine == "ray":
                from ..ray import run_shards

                written = run_shards(files, fields, pending, schema, out.path, model=str(model_dir), device=device,
                                     dtype=dtype, backend=backend, batch_size=batch_size, max_length=max_length,
                                     normalize=normalize, on_error=on_error, address=ray_address,
                                     workers=ray_workers, cpus_per_worker=ray_cpus_per_worker,
                                     on_shard=lambda f: bar.update(f["row_end"] - f["row_start"]))
            else:
                if encoder is None:
                    from ..encode import SentenceEncoder

                    encoder = SentenceEncoder(model_dir, device=device, dtype=dtype, backend=backend)
                    if backend == "triton":
                        encoder.backend()  # raises a clear error where the Triton path cannot run
                    if max_length:
                        encoder.max_seq_length = facts["max_seq_length"]
                written = run_local(encoder, files, fields, pending, schema, out.path, batch_size, normalize,
                                    on_error, bar)
        done.update(written)
        manifest = _manifest(spec, files, shards, done, schema, total, engine, time.perf_counter() - t0)
        out.write_manifest(manifest)
    finally:
        out.close()
    elapsed = time.perf_counter() - t0
    log(f"{out.path}: {manifest['rows']} rows in {len(shards)} shards"
        + (f", {manifest['skipped']} bad records skipped (listed in _manifest.json)" if manifest["skipped"] else "")
        + f"; {sum(s.rows for s in pending)} embedded in this run, {elapsed:.1f} s")
    return manifest


def run_local(encoder, files, fields, pending, schema, out_dir, batch_size, normalize, on_error, bar) -> Dict:
    """The pending shards on this process's encoder (``engine.LocalEngine``): ``{index: facts}``."""
    from .engine import LocalEngine

    written = {}
    device = str(encoder.model.device)
    dtype = str(encoder.model.dtype).replace("torch.", "")

    def write(rows, emb):
        facts = shard_facts(rows, dtype=dtype, device=device)
        write_shard(out_dir, rows.shard.name, shard_table(schema, rows, emb), facts)
        written[rows.shard.index] = facts
        bar.update(len(rows.skipped))

    LocalEngine(encoder, batch_size, normalize).run(pending, lambda s: read_shard(files, s, fields, on_error), write,
                                                    on_batch=bar.update)
    return written


def _manifest(spec, files, shards, done, schema, total, engine, seconds) -> Dict:
    facts = [done[s.index] for s in shards]
    examples = [e for f in facts for e in f["skipped_examples"]][:MAX_SKIPPED_NOTED]
    return {"format": SPEC_FORMAT, "complete": True, "rows": sum(f["rows"] for f in facts), "input_rows": total,
            "skipped": sum(f["skipped"] for f in facts), "skipped_examples": examples,
            "columns": {f.name: str(f.type) for f in schema},
            "shards": [{"file": s.name, "row_start": f["row_start"], "row_end": f["row_end"], "rows": f["rows"],
                        "skipped": f["skipped"], "dtype": f.get("dtype"), "device": f.get("device")}
                       for s, f in zip(shards, facts)],
            "model": spec["model"], "normalize": spec["normalize"], "max_seq_length": spec["max_seq_length"],
            "inputs": [{**f.identity(), "format": f.format} for f in files], "fields": {
                "text": spec["text_field"], "id": spec["id_field"], "keep": spec["keep_fields"]},
            "engine_of_last_run": engine, "seconds_of_last_run": round(seconds, 2),
            "written_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(args) -> int:
    """``fastbert encode --input ...`` (the arguments of ``fastbert.cli``)."""
    if args.texts or args.file:
        raise ValueError("--input reads the texts from files: give no texts and no --file with it")
    if not args.output:
        raise ValueError("--input needs --output DIR (a folder of Parquet shards)")
    if args.output.lower().endswith((".npy", ".jsonl", ".csv")):
        raise ValueError(f"--output {args.output}: with --input, --output is a folder of Parquet shards; "
                         "for one .npy/.jsonl/.csv file use --file")
    if args.no_table:
        raise ValueError("--no-table is for texts and --file (--input prints no table)")
    import torch

    device = args.device
    if device is not None:
        try:
            torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"--device {device!r} is not a device ({e}); use cpu, cuda or cuda:N") from None
        if torch.device(device).type == "cuda" and not torch.cuda.is_available() and args.engine == "local":
            raise ValueError(f"--device {device}: no CUDA device is visible on this machine; use --device cpu")
    keep = [k.strip() for k in args.keep_fields.split(",") if k.strip()] if args.keep_fields else []
    encode_corpus(args.input, args.output, text_field=args.text_field, id_field=args.id_field, keep_fields=keep,
                  model=args.model, device=device, dtype=args.dtype,
                  backend=args.backend, batch_size=args.batch_size, max_length=args.max_length,
                  normalize=not args.no_normalize, shard_size=args.shard_size, on_error=args.on_error,
                  overwrite=args.overwrite, engine=args.engine, ray_address=args.ray_address,
                  ray_workers=args.ray_workers, ray_cpus_per_worker=args.ray_cpus_per_worker)
    return 0
