"""Shards: the job cut into fixed ranges of input rows, and the reading of one shard.

Shard ``k`` holds input positions ``[k * shard_size, (k + 1) * shard_size)`` (the last one fewer), counted
over the inputs in order; a shard may span files. The plan is made by one pass over the inputs that checks
every record (a bad one stops the job there, before any embedding, unless ``on_error="skip"``) and notes
where each shard's rows begin in each file (a byte offset, or a Parquet row), so that a shard is read on its
own: after a restart, or on another machine (the Ray engine). The same inputs give the same plan, which is
what makes a resumed job write exactly the rows that were missing.
"""
import itertools
import os
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

from .sources import BadRecord, Fields, InputError, InputFile, records


@dataclass(frozen=True)
class Segment:
    file: int  # index into the job's inputs
    start: int  # byte offset (text formats) or row index (Parquet) of its first record
    line: int  # line (Parquet: row) number of its first record
    rows: int


@dataclass(frozen=True)
class Shard:
    index: int
    row_start: int  # input position of its first row
    rows: int  # input rows in it, bad ones included
    segments: Tuple[Segment, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


@dataclass
class ShardRows:
    """The records of one shard: their input positions, texts, ids and kept fields (one list per field),
    and the bad records skipped (``file:line: problem``)."""
    shard: Shard
    positions: List[int] = field(default_factory=list)
    texts: List[str] = field(default_factory=list)
    ids: List[object] = field(default_factory=list)
    kept: List[list] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def make_plan(inputs: Sequence[InputFile], fields: Fields, shard_size: int, on_error: str = "stop"):
    """``(shards, rows, bad_rows)`` of the inputs; the first bad record raises unless ``on_error="skip"``."""
    shards, segments, bad = [], [], 0
    total = in_shard = 0
    for fi, src in enumerate(inputs):
        seg, pos = None, 0
        for line, nxt, rec in records(src, fields):
            if isinstance(rec, BadRecord):
                if on_error != "skip":
                    raise rec
                bad += 1
            if in_shard == shard_size:
                if seg:
                    segments.append(Segment(*seg))
                shards.append(Shard(len(shards), total - in_shard, in_shard, tuple(segments)))
                seg, segments, in_shard = None, [], 0
            if seg is None:
                seg = [fi, pos, line, 0]
            seg[3] += 1
            in_shard += 1
            total += 1
            pos = nxt
        if seg:
            segments.append(Segment(*seg))
    if in_shard:
        shards.append(Shard(len(shards), total - in_shard, in_shard, tuple(segments)))
    return shards, total, bad


def read_shard(inputs: Sequence[InputFile], shard: Shard, fields: Fields, on_error: str = "stop") -> ShardRows:
    """The records of ``shard``, read from where the plan says they begin."""
    out = ShardRows(shard, kept=[[] for _ in fields.keep])
    position = shard.row_start
    for seg in shard.segments:
        src = inputs[seg.file]
        st = os.stat(src.path)
        if (st.st_size, st.st_mtime_ns) != (src.size, src.mtime_ns):
            raise InputError(f"{src.path} changed while the job ran; run the command again with --overwrite")
        stream = records(src, fields, seg.start, seg.line)
        got = 0
        for _, _, rec in itertools.islice(stream, seg.rows):
            got += 1
            if isinstance(rec, BadRecord):
                if on_error != "skip":
                    raise rec
                out.skipped.append(str(rec))
            else:
                text, ident, kept = rec
                out.positions.append(position)
                out.texts.append(text)
                out.ids.append(ident)
                for column, value in zip(out.kept, kept):
                    column.append(value)
            position += 1
        stream.close()
        if got != seg.rows:
            raise InputError(f"{src.path} has fewer records than when the job was planned; run the command again "
                             "with --overwrite")
    return out
