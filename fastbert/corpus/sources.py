"""The inputs of a corpus job: which files, and their records one by one.

A record is one text with its id and kept fields. The formats, by file name:

- ``.txt``: a line is a text (no fields);
- ``.jsonl``: a line is a JSON object, the text in ``fields.text``;
- ``.csv`` / ``.tsv``: a header row names the columns, then a record per row (quoted newlines allowed);
- ``.parquet``: a row is a record, the text in a string column.

Every record has a place (``file:line``, or ``file: row N`` in Parquet) that errors name. A problem with one
record (malformed JSON or CSV, a missing or empty text, undecodable bytes, a blank line) comes out as a
``BadRecord`` in the record stream, for the caller to raise or to skip and count; a problem with a whole file
(an unknown format, a missing column) raises ``InputError`` at once.

Text formats are read as bytes and decoded line by line, so that a record can be read from a byte offset:
that is how a shard's rows are read without the rows before them (``plan.py``).
"""
import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """A problem with an input as a whole (its name, its format, its columns): never skipped."""


class BadRecord(ValueError):
    """A problem with one record: ``file:line: problem``."""

    def __init__(self, path: str, line: int, problem: str, parquet: bool = False):
        self.path, self.line, self.problem = path, line, problem
        super().__init__(f"{path}: row {line}: {problem}" if parquet else f"{path}:{line}: {problem}")


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute
    format: str  # a value of FORMATS
    size: int
    mtime_ns: int

    def identity(self) -> dict:
        """What the job spec compares: a file that changed is another input."""
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    id: Optional[str] = None
    keep: Tuple[str, ...] = ()


# A record: (text, id, kept values in the order of Fields.keep)
Record = Tuple[str, object, tuple]


# ------------------------------------------------------------------------------------------------------
# Which files
# ------------------------------------------------------------------------------------------------------
def _input_file(path: Path) -> InputFile:
    st = path.stat()
    return InputFile(str(path.resolve()), FORMATS[path.suffix.lower()], st.st_size, st.st_mtime_ns)


def expand_inputs(patterns: Sequence[str], exclude: Optional[str] = None) -> Tuple[List[InputFile], List[Path]]:
    """``(files, ignored)``: the files named by ``patterns`` (files, globs, folders searched recursively), in
    the order given, each glob and folder sorted, and those of other formats found in folders and globs. Files
    under ``exclude`` (the output folder) are left out; a file listed twice, a pattern that matches nothing and
    a named file of an unknown format raise."""
    exclude = os.path.realpath(exclude) if exclude else None
    files, ignored = [], []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            if not matches:
                raise InputError(f"--input {pattern}: no file matches this pattern")
        else:
            matches = [Path(pattern)]
            if not matches[0].exists():
                raise InputError(f"--input {pattern}: no such file or folder")
        for m in matches:
            if m.is_dir():
                found = sorted(p for p in m.rglob("*") if p.is_file()
                               and not any(part.startswith((".", "_")) for part in p.relative_to(m).parts))
                found = [p for p in found if not (exclude and _under(p, exclude))]
                ignored += [p for p in found if p.suffix.lower() not in FORMATS]
                found = [p for p in found if p.suffix.lower() in FORMATS]
                if not found:
                    raise InputError(f"--input {m}: no {', '.join(FORMATS)} file in this folder")
                files += found
            elif m.suffix.lower() in FORMATS:
                if not (exclude and _under(m, exclude)):
                    files.append(m)
            elif not glob.has_magic(pattern):
                raise InputError(f"--input {m}: unknown format {m.suffix!r}; fastbert reads {', '.join(FORMATS)}")
            else:
                ignored.append(m)
    out, seen = [], set()
    for f in files:
        info = _input_file(f)
        if info.path in seen:
            raise InputError(f"--input: {f} is listed twice (each input row must be embedded exactly once)")
        seen.add(info.path)
        out.append(info)
    if not out:
        raise InputError("--input: no input file")
    return out, ignored


def _under(path: Path, folder: str) -> bool:
    real = os.path.realpath(path)
    return real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)


def check_fields(inputs: Sequence[InputFile], fields: Fields, text_field_given: bool) -> None:
    """Fields that a format cannot have raise before any work."""
    plain = [f for f in inputs if f.format == "txt"]
    if plain and (fields.id or fields.keep):
        raise InputError(f"{plain[0].path} is plain text (a line is a text): it has no fields for --id-field or "
                         "--keep-fields; give JSONL, CSV/TSV or Parquet inputs, or drop those options")
    if plain and len(plain) == len(inputs) and text_field_given:
        raise InputError(f"--text-field: {plain[0].path} is plain text (a line is a text) and has no fields")
    columns = ["row"] + (["id"] if fields.id else []) + ["embedding"] + list(fields.keep)
    twice = next((c for i, c in enumerate(columns) if c in columns[:i]), None)
    if twice:
        raise InputError(f"--keep-fields: the output would have two {twice!r} columns (its own columns are row, "
                         "embedding and, with --id-field, id)")


# ------------------------------------------------------------------------------------------------------
# Records, format by format
# ------------------------------------------------------------------------------------------------------
def records(src: InputFile, fields: Fields, start: int = 0, line: int = 1) -> Iterator[tuple]:
    """``(line, next_start, record or BadRecord)`` for each record of ``src`` from ``start`` (a byte offset of
    a record's first line, or a Parquet row index), whose line (row) number is ``line``. ``next_start`` and
    the next line number are where the following record begins."""
    if src.format == "parquet":
        return _parquet_records(src, fields, start)
    if src.format in ("csv", "tsv"):
        return _csv_records(src, fields, start, line)
    return _line_records(src, fields, start, line)


def _lines(path: str, start: int) -> Iterator[Tuple[bytes, int]]:
    """(line without its terminator, offset after it) from byte ``start``."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        for raw in f:
            pos += len(raw)
            if pos == len(raw) and raw.startswith(BOM):
                raw = raw[len(BOM):]
            yield raw.rstrip(b"\n").rstrip(b"\r"), pos


def _line_records(src, fields, start, line):
    jsonl = src.format == "jsonl"
    for n, (raw, pos) in enumerate(_lines(src.path, start), line):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, pos, BadRecord(src.path, n, f"undecodable bytes (not UTF-8: {e.reason} at column {e.start + 1})")
            continue
        if not text.strip():
            yield n, pos, BadRecord(src.path, n, "blank line (every line is one record)")
        elif not jsonl:
            yield n, pos, (text, None, ())
        else:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield n, pos, BadRecord(src.path, n, f"malformed JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield n, pos, BadRecord(src.path, n, f"a JSON {type(obj).__name__}, not an object")
                continue
            yield n, pos, _record(src.path, n, fields, obj.get, obj.__contains__)


def _record(path, n, fields, get, has, parquet=False):
    """A record (or BadRecord) from one row's field getter."""
    text = get(fields.text)
    if text is None:
        why = "is null" if has(fields.text) else "is missing"
        return BadRecord(path, n, f"the text field {fields.text!r} {why}", parquet)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return BadRecord(path, n, f"undecodable bytes in {fields.text!r} (not UTF-8: {e.reason})", parquet)
    if not isinstance(text, str):
        return BadRecord(path, n, f"the text field {fields.text!r} is a {type(text).__name__}, not a string", parquet)
    if not text.strip():
        return BadRecord(path, n, f"empty text in {fields.text!r}", parquet)
    ident = None
    if fields.id:
        ident = get(fields.id)
        if ident is None or ident == "":
            return BadRecord(path, n, f"the id field {fields.id!r} is missing or empty", parquet)
    return text, ident, tuple(get(k) for k in fields.keep)


def _decoded_lines(path, start, line, state):
    """Lines (with "\\n") for the csv module, decoded with surrogateescape (so that undecodable bytes reach
    the record they belong to); ``state`` tracks the offset and line number consumed so far."""
    for raw, pos in _lines(path, start):
        state["pos"], state["line"] = pos, state["line"] + 1
        yield raw.decode("utf-8", "surrogateescape") + "\n"


def _undecodable(values) -> bool:
    try:
        for v in values:
            v.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _csv_header(src: InputFile, fields: Fields):
    """(columns, offset and line number of the first data row)."""
    state = {"pos": 0, "line": 0}
    reader = csv.reader(_decoded_lines(src.path, 0, 0, state), delimiter="\t" if src.format == "tsv" else ",",
                        strict=True)
    try:
        header = next(reader)
    except StopIteration:
        header = None
    except csv.Error as e:
        raise InputError(f"{src.path}:1: malformed header row ({e})") from None
    if not header:
        raise InputError(f"{src.path}: no header row (the first row names the columns)")
    if _undecodable(header):
        raise InputError(f"{src.path}:1: undecodable bytes in the header row (not UTF-8)")
    missing = [c for c in [fields.text, fields.id, *fields.keep] if c and c not in header]
    if missing:
        raise InputError(f"{src.path}: no column {missing[0]!r} in the header (columns: {', '.join(header)})")
    return header, state["pos"], state["line"] + 1


def _csv_records(src, fields, start, line):
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a long document is a text, not an error
    header, first, first_line = _csv_header(src, fields)
    if start == 0:
        start, line = first, first_line
    state = {"pos": start, "line": line - 1}
    reader = csv.reader(_decoded_lines(src.path, start, line, state),
                        delimiter="\t" if src.format == "tsv" else ",", strict=True)
    while True:
        n = state["line"] + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield n, state["pos"], BadRecord(src.path, n, f"malformed row ({e})")
            continue
        if not row:
            yield n, state["pos"], BadRecord(src.path, n, "blank line (every line is one record)")
        elif len(row) != len(header):
            yield n, state["pos"], BadRecord(src.path, n, f"{len(row)} fields where the header has {len(header)}")
        elif _undecodable(row):
            yield n, state["pos"], BadRecord(src.path, n, "undecodable bytes (not UTF-8)")
        else:
            values = dict(zip(header, row))
            yield n, state["pos"], _record(src.path, n, fields, values.get, values.__contains__)


def parquet_schema(src: InputFile, fields: Fields):
    """The Arrow schema of a Parquet input, checked for the fields the job reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(src.path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{src.path}: not a readable Parquet file ({e})") from None
    missing = [c for c in [fields.text, fields.id, *fields.keep] if c and c not in schema.names]
    if missing:
        raise InputError(f"{src.path}: no column {missing[0]!r} (columns: {', '.join(schema.names)})")
    t = schema.field(fields.text).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        raise InputError(f"{src.path}: the text column {fields.text!r} is {t}, not a string column")
    return schema


def _parquet_records(src, fields, start):
    import pyarrow.parquet as pq

    parquet_schema(src, fields)
    pf = pq.ParquetFile(src.path)
    columns = [c for c in [fields.text, fields.id, *fields.keep] if c]
    first_row, groups = 0, []
    for g in range(pf.metadata.num_row_groups):  # the row groups from the one holding row `start`
        n = pf.metadata.row_group(g).num_rows
        if groups or first_row + n > start:
            groups.append(g)
        else:
            first_row += n
    row = first_row
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=4096, row_groups=groups, columns=columns):
        cols = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
        for i in range(batch.num_rows):
            if row >= start:
                yield row + 1, row + 1, _record(src.path, row + 1, fields, lambda k: cols[k][i], cols.__contains__,
                                                parquet=True)
            row += 1
