"""fastbert on Ray Data: sentence embeddings over an actor pool of encoders, on one machine or a cluster.

    import ray, fastbert.ray
    ds = ray.data.read_parquet("s3://bucket/docs/")
    ds = fastbert.ray.embed(ds, text_column="text")     # + an "embedding" column (fixed_size_list<float>[H])
    ds.write_parquet("s3://bucket/vectors/")

``embed`` is ``map_batches`` over a pool of ``Encoder`` actors: each actor loads the model once (its own
``SentenceEncoder``: the weights, on its GPU or with ``cpus_per_worker`` torch threads) and embeds the
batches Ray Data streams to it; nothing else is held by a worker but the batch in hand. By default the pool
has one actor per GPU of the cluster, or, without GPUs, one per group of ``cpus_per_worker`` CPUs (4).

``fastbert encode --input ... --engine ray`` runs a corpus job (``fastbert.corpus``) the same way: the driver
plans the shards (one pass over the inputs, checking every record), and a Ray Dataset of the shards still to
write goes through ``map_batches`` over ``ShardEncoder`` actors, each of which reads its shard's rows
straight from the inputs, embeds them and writes the shard to the output folder exactly as the local engine
does. So every node must see the inputs and the output folder at the same paths (a shared filesystem), and
have fastbert installed; the driver writes the manifest. Needs ``pip install 'fastbert[ray]'``.
"""
import json
import os
import socket
from dataclasses import asdict
from typing import Callable, Dict, Optional

DEFAULT_CPUS_PER_WORKER = 4
ROWS_PER_CALL = 1024  # rows of a Ray Dataset handed to an actor per call (it embeds them batch_size at a time)


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("the Ray engine needs Ray: pip install 'fastbert[ray]'") from None
    return ray


class Encoder:
    """A Ray Data actor: one ``SentenceEncoder``; a pyarrow batch in, the same batch plus embeddings out."""

    def __init__(self, model=None, device=None, dtype=None, backend="auto", max_length=None, batch_size=32,
                 normalize=True, text_column="text", embedding_column="embedding", threads=None):
        import torch

        from .encode import SentenceEncoder

        if threads and (device is None or torch.device(device).type == "cpu"):
            torch.set_num_threads(int(threads))
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.encoder = SentenceEncoder(model, device=device, dtype=dtype, backend=backend)
        if max_length:
            self.encoder.max_seq_length = min(max_length, self.encoder.model.config.max_position_embeddings)
        self.batch_size, self.normalize = batch_size, normalize
        self.text_column, self.embedding_column = text_column, embedding_column

    def embed(self, texts):
        from .corpus.engine import embed_texts

        return embed_texts(self.encoder, texts, self.batch_size, self.normalize)

    def __call__(self, batch):
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                what = "empty" if isinstance(t, str) else ("null" if t is None else f"a {type(t).__name__}")
                raise ValueError(f"fastbert.ray.embed: column {self.text_column!r} holds {what} text (row {i} of a "
                                 "batch); drop or fill such rows first (ds.filter)")
        emb = self.embed(texts)
        column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        return batch.append_column(self.embedding_column, column)


class ShardEncoder(Encoder):
    """A Ray Data actor for ``fastbert encode --engine ray``: a batch of shard descriptions in, each shard read
    from the inputs, embedded and written to the output folder; their facts out."""

    def __init__(self, files, fields, schema, out_dir, on_error, **encoder_kwargs):
        super().__init__(**encoder_kwargs)
        self.files, self.fields, self.schema, self.out_dir, self.on_error = files, fields, schema, out_dir, on_error
        model = self.encoder.model
        self.where = {"dtype": str(model.dtype).replace("torch.", ""), "device": str(model.device),
                      "worker": f"{socket.gethostname()}:{os.getpid()}"}

    def __call__(self, batch):
        from .corpus.plan import Segment, Shard, read_shard
        from .corpus.writer import shard_facts, shard_table, write_shard

        out = []
        for text in batch["shard"]:
            d = json.loads(text)
            shard = Shard(d["index"], d["row_start"], d["rows"], tuple(Segment(**s) for s in d["segments"]))
            rows = read_shard(self.files, shard, self.fields, self.on_error)
            facts = shard_facts(rows, **self.where)
            write_shard(self.out_dir, shard.name, shard_table(self.schema, rows, self.embed(rows.texts)), facts)
            out.append(json.dumps(facts))
        return {"facts": out}


def _pool(ray, device, workers, cpus_per_worker) -> Dict:
    """``map_batches`` arguments for the actor pool: one actor per GPU, else per ``cpus_per_worker`` CPUs."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if gpus and (device is None or not str(device).startswith("cpu")):
        size, per_actor = workers or gpus, {"num_gpus": 1, "num_cpus": cpus_per_worker or 1}
        threads = None
    else:
        per = cpus_per_worker or min(DEFAULT_CPUS_PER_WORKER, cpus)
        size, per_actor, threads = workers or max(1, cpus // per), {"num_cpus": per}, per
    return {"compute": ray.data.ActorPoolStrategy(size=size), **per_actor}, threads


def _quiet_data_context(ray):
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # fastbert's own bar counts texts
    ctx.print_on_execution_start = False


def embed(dataset, text_column: str = "text", *, model=None, embedding_column: str = "embedding",
          batch_size: int = 32, device=None, dtype=None, backend: str = "auto", max_length: Optional[int] = None,
          normalize: bool = True, workers: Optional[int] = None, cpus_per_worker: Optional[int] = None,
          rows_per_call: int = ROWS_PER_CALL):
    """``dataset`` with an ``embedding_column`` (``fixed_size_list<float>[H]``) of the sentence embeddings of
    ``text_column``, computed by a pool of ``Encoder`` actors (see the module docstring). Lazy, as Ray
    Datasets are: nothing runs until the result is consumed. A null, non-string or empty text fails the job."""
    ray = _ray()
    if text_column not in dataset.columns():
        raise ValueError(f"fastbert.ray.embed: no column {text_column!r} (columns: {dataset.columns()})")
    pool, threads = _pool(ray, device, workers, cpus_per_worker)
    return dataset.map_batches(
        Encoder, batch_size=rows_per_call, batch_format="pyarrow", **pool,
        fn_constructor_kwargs=dict(model=str(model) if model else None, device=device, dtype=_dtype_name(dtype),
                                   backend=backend, max_length=max_length, batch_size=batch_size,
                                   normalize=normalize, text_column=text_column, embedding_column=embedding_column,
                                   threads=threads))


def _dtype_name(dtype):
    return None if dtype is None else str(dtype).replace("torch.", "")


def run_shards(files, fields, pending, schema, out_dir, *, model, device=None, dtype=None, backend="auto",
               batch_size=32, max_length=None, normalize=True, on_error="stop", address=None, workers=None,
               cpus_per_worker=None, on_shard: Callable[[Dict], None] = lambda facts: None) -> Dict[int, Dict]:
    """The corpus job's pending shards on Ray (``fastbert.corpus.job``): ``{shard index: facts}``. Joins the
    cluster at ``address``, or uses the Ray already initialised in this process, or starts (and stops) a local
    one."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    elif address:
        raise ValueError(f"--ray-address {address}: Ray is already initialised in this process")
    try:
        _quiet_data_context(ray)
        written = {}
        if not pending:
            return written
        pool, threads = _pool(ray, device, workers, cpus_per_worker)
        items = [{"shard": json.dumps(asdict(s))} for s in pending]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardEncoder, batch_size=1, **pool,
            fn_constructor_kwargs=dict(files=files, fields=fields, schema=schema, out_dir=str(out_dir),
                                       on_error=on_error, model=model, device=device, dtype=_dtype_name(dtype),
                                       backend=backend, max_length=max_length, batch_size=batch_size,
                                       normalize=normalize, threads=threads))
        try:
            for row in ds.iter_rows():
                facts = json.loads(row["facts"])
                written[facts["shard"]] = facts
                on_shard(facts)
        except ray.exceptions.RayError as e:
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            raise RuntimeError(f"a Ray worker failed: {lines[-1] if lines else type(e).__name__}") from None
        return written
    finally:
        if started:
            ray.shutdown()
