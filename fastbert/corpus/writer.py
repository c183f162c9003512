"""The output: Parquet shards with one schema, each written under a temporary name and renamed.

Columns: ``row`` (int64, the record's input position), ``id`` (with ``--id-field``), ``embedding``
(``fixed_size_list<float>[H]``), then the kept fields. An id or kept field is a string column unless every
input is Parquet with one type for it (then that type); JSON values other than strings are kept as their
JSON text. Each shard carries its own facts (rows, skipped records, dtype, device) in the Parquet key-value
metadata under ``fastbert``, so that the manifest can be rebuilt from the shards after a restart.

A shard is written to ``.part-NNNNNN.parquet.<pid>.tmp`` (hidden from ``pyarrow.dataset``), flushed to disk
and renamed to ``part-NNNNNN.parquet``: a shard file exists whole or not at all.
"""
import json
import os
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .plan import ShardRows
from .sources import Fields, InputFile, parquet_schema

META_KEY = b"fastbert"
MAX_SKIPPED_NOTED = 100  # per shard: the first problems are kept word for word, all are counted


def output_schema(inputs: Sequence[InputFile], fields: Fields, dim: int) -> pa.Schema:
    columns = [pa.field("row", pa.int64(), nullable=False)]
    named = ([fields.id] if fields.id else []) + list(fields.keep)
    types = {name: pa.string() for name in named}
    if named and all(src.format == "parquet" for src in inputs):
        schemas = [parquet_schema(src, fields) for src in inputs]
        for name in named:
            seen = {s.field(name).type for s in schemas}
            if len(seen) == 1:
                types[name] = seen.pop()
    if fields.id:
        columns.append(pa.field("id", types[fields.id]))
    columns.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    columns += [pa.field(name, types[name]) for name in fields.keep]
    return pa.schema(columns)


def _as_text(value):
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _column(values, type_):
    if pa.types.is_string(type_):
        values = [_as_text(v) for v in values]
    return pa.array(values, type=type_)


def shard_table(schema: pa.Schema, rows: ShardRows, embeddings: np.ndarray) -> pa.Table:
    dim = schema.field("embedding").type.list_size
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.shape != (len(rows.texts), dim):
        raise AssertionError(f"shard {rows.shard.index}: {emb.shape} embeddings for {len(rows.texts)} texts")
    arrays = {"row": pa.array(rows.positions, pa.int64()),
              "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)}
    if "id" in schema.names:
        arrays["id"] = _column(rows.ids, schema.field("id").type)
    kept_names = schema.names[schema.names.index("embedding") + 1:]
    for name, values in zip(kept_names, rows.kept, strict=True):
        arrays[name] = _column(values, schema.field(name).type)
    return pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)


def shard_facts(rows: ShardRows, **extra) -> Dict:
    s = rows.shard
    return {"shard": s.index, "row_start": s.row_start, "row_end": s.row_start + s.rows, "rows": len(rows.texts),
            "skipped": len(rows.skipped), "skipped_examples": rows.skipped[:MAX_SKIPPED_NOTED], **extra}


def write_shard(out_dir, name: str, table: pa.Table, facts: Dict) -> Path:
    """``table`` as ``out_dir/name``, atomically."""
    out_dir = Path(out_dir)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps(facts).encode()
    table = table.replace_schema_metadata(meta)
    tmp = out_dir / f".{name}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    _fsync(tmp)
    os.replace(tmp, out_dir / name)
    return out_dir / name


def read_facts(path) -> Dict:
    """The facts a shard was written with (``shard_facts``), from its footer."""
    meta = pq.read_schema(path).metadata or {}
    if META_KEY not in meta:
        raise ValueError(f"{path} is not a fastbert shard (no '{META_KEY.decode()}' metadata)")
    return json.loads(meta[META_KEY])


def write_json(path, obj) -> None:
    """``obj`` as JSON at ``path``, atomically (temporary file, flush, rename)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
