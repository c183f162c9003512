"""fastbert encode --input (fastbert.corpus): every input format to Parquet shards, vectors against
sentence-transformers; bad input stops naming file and line (or is skipped and counted); another job behind
an output is refused; a job killed with SIGKILL at random points resumes to every row exactly once, with the
vectors of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from fastbert import SentenceEncoder  # noqa: E402
from fastbert.cli import main  # noqa: E402
from fastbert.corpus import encode_corpus  # noqa: E402
from fastbert.corpus.output import JobMismatch  # noqa: E402

WORDS = ("the of science cookie debian kernel theory quantum apple river idea music über café naïve 東京 "
         "résumé zebra, quick; brown fox: jumps \"over\" lazy dog's tail").split()


def _texts(n, seed, long_every=0, max_words=40):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 300 if long_every and i % long_every == long_every - 1 else int(rng.integers(1, max_words))
        out.append(" ".join(rng.choice(WORDS, k)))  # awkward lengths, punctuation, quotes, non-ASCII
    return out


def _records(texts, seed):
    rng = np.random.default_rng(seed)
    return [{"id": f"doc-{seed}-{i}", "text": t, "score": int(rng.integers(0, 100))} for i, t in enumerate(texts)]


def _table(out):
    """The output folder as pyarrow.dataset reads it (one table), and its embeddings as (N, H)."""
    t = pads.dataset(str(out), format="parquet").to_table()
    emb = t.column("embedding").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
    return t, emb


@pytest.fixture(scope="module", autouse=True)
def _few_threads_and_memory_back():
    """pyarrow's thread pools at one thread each while this module runs, and free heap pages back to the OS
    (glibc ``malloc_trim``) after it: every thread that allocates leaves a malloc arena in the process, which the
    RSS-growth check of tests/test_tokenizer_corpus.py, later in the same session, would count."""
    cpu, io = pa.cpu_count(), pa.io_thread_count()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    yield
    pa.set_cpu_count(cpu)
    pa.set_io_thread_count(io)
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="module")
def enc(minilm_dir):
    return SentenceEncoder(minilm_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def reference(minilm_dir):
    """sentence-transformers' own embeddings (the independent reference)."""
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    return lambda texts: model.encode(texts, batch_size=16)


def _assert_same_vectors(ours, ref):
    assert ours.shape == ref.shape
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99999, cos.min()
    np.testing.assert_allclose(ours, ref, atol=2e-5)


# ------------------------------------------------------------------------------------------- formats


def test_formats_in_a_folder_match_sentence_transformers(tmp_path, enc, reference):
    texts = _texts(29, seed=1, long_every=15) + ["quoted, \"comma\"\nand a newline inside a CSV field"]
    recs = _records(texts, seed=1)
    d = tmp_path / "in"
    d.mkdir()
    with open(d / "a.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs[:8])
    pacsv.write_csv(pa.Table.from_pylist(recs[8:16] + recs[-1:]), d / "b.csv")
    pacsv.write_csv(pa.Table.from_pylist(recs[16:22]), d / "c.tsv", pacsv.WriteOptions(delimiter="\t"))
    pq.write_table(pa.Table.from_pylist(recs[22:-1]), d / "d.parquet", row_group_size=3)
    (d / "notes.md").write_text("not an input")
    order = recs[:16] + recs[-1:] + recs[16:-1]

    logged = []
    m = encode_corpus([str(d)], tmp_path / "out", id_field="id", keep_fields=["score"], encoder=enc, shard_size=7,
                      batch_size=4, log=logged.append)
    assert "ignored 1 file(s) of other formats" in logged[0] and "notes.md" in logged[0]
    t, emb = _table(tmp_path / "out")
    assert t.column("row").to_pylist() == list(range(len(order)))
    assert t.column("id").to_pylist() == [r["id"] for r in order]
    assert t.column("score").to_pylist() == [str(r["score"]) for r in order]  # mixed formats: strings
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    _assert_same_vectors(emb, reference([r["text"] for r in order]))
    assert m["complete"] and m["rows"] == len(order) and m["skipped"] == 0 and len(m["shards"]) == 5
    assert [s["file"] for s in m["shards"]] == sorted(p.name for p in (tmp_path / "out").glob("part-*.parquet"))

    # globs, in the order given; a Parquet-only job keeps the Parquet types
    encode_corpus([str(d / "*.?sv"), str(d / "a.jsonl")], tmp_path / "out2", id_field="id", encoder=enc,
                  shard_size=100, log=lambda *a: None)
    t2, emb2 = _table(tmp_path / "out2")
    want = recs[8:16] + recs[-1:] + recs[16:22] + recs[:8]
    assert t2.column("id").to_pylist() == [r["id"] for r in want]
    _assert_same_vectors(emb2, reference([r["text"] for r in want]))
    encode_corpus([str(d / "d.parquet")], tmp_path / "out3", keep_fields=["score", "id"], encoder=enc,
                  log=lambda *a: None)
    t3, _ = _table(tmp_path / "out3")
    assert t3.schema.field("score").type == pa.int64() and "id" in t3.schema.names
    assert t3.column("score").to_pylist() == [r["score"] for r in recs[22:-1]]


def test_txt_through_the_command_line(tmp_path, reference, capsys):
    texts = _texts(23, seed=2)
    f = tmp_path / "lines.txt"
    f.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(texts).encode() + b"\r\n")  # a BOM and CRLF line ends
    out = tmp_path / "out"
    assert main(["encode", "--input", str(f), "--output", str(out), "--shard-size", "5", "--dtype", "float32"]) == 0
    t, emb = _table(out)
    assert t.column("row").to_pylist() == list(range(23)) and t.schema.names == ["row", "embedding"]
    _assert_same_vectors(emb, reference(texts))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"] == 23 and len(manifest["shards"]) == 5 and manifest["normalize"] is True
    assert "23 rows in 5 shards" in capsys.readouterr().out
    # the old paths are unchanged, and do not mix with --input
    assert main(["encode", "--input", str(f), "--output", str(tmp_path / "x.npy")]) == 1
    assert "is a folder of Parquet shards" in capsys.readouterr().err
    assert main(["encode", "--input", str(f), "--file", str(f), "--output", str(out)]) == 1
    assert "give no texts and no --file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- bad input

def _jsonl(*lines):
    return "\n".join(lines) + "\n"


GOOD = json.dumps({"text": "a fine text", "id": 1})
BAD_INPUTS = [
    ("a.jsonl", _jsonl(GOOD, '{"text": "unfinished', GOOD), 2, "malformed JSON"),
    ("a.jsonl", _jsonl(GOOD, GOOD, '["a list"]'), 3, "not an object"),
    ("a.jsonl", _jsonl(GOOD, '{"title": "no text"}'), 2, "the text field 'text' is missing"),
    ("a.jsonl", _jsonl(GOOD, '{"text": null}'), 2, "'text' is null"),
    ("a.jsonl", _jsonl(GOOD, '{"text": "   "}'), 2, "empty text"),
    ("a.jsonl", _jsonl(GOOD, '{"text": 17}'), 2, "is a int, not a string"),
    ("a.jsonl", _jsonl(GOOD, "", GOOD), 2, "blank line"),
    ("a.jsonl", GOOD.encode() + b"\n" + b'{"text": "caf\xe9"}\n', 2, "undecodable bytes"),
    ("a.txt", b"fine\nalso fine\n\xff\xfe broken\n", 3, "undecodable bytes"),
    ("a.txt", "fine\n\nthird\n", 2, "blank line"),
    ("a.csv", "id,text\n1,fine\n2,too,many\n", 3, "3 fields where the header has 2"),
    ("a.csv", "id,text\n1,fine\n2,\n", 3, "empty text"),
    ("a.csv", 'id,text\n1,"a\nb"\n2,"bad "quote\n', 4, "malformed row"),
    ("a.csv", b"id,text\n1,fine\n2,caf\xe9\n", 3, "undecodable bytes"),
    ("a.tsv", "id\ttext\n1\tfine\n\n", 3, "blank line"),
]


@pytest.mark.parametrize("name, content, line, message", BAD_INPUTS)
def test_bad_record_stops_naming_file_and_line(name, content, line, message, tmp_path, capsys):
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    assert main(["encode", "--input", str(f), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastbert encode: error:"), err
    assert f"{f}:{line}: " in err[0] and message in err[0], err[0]
    assert not out.exists()  # every record is checked before anything is written


def test_bad_parquet_rows_and_files(tmp_path, capsys):
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["fine", None, "fine"], "id": [1, 2, 3]}), f)
    assert main(["encode", "--input", str(f), "--output", str(tmp_path / "o")]) == 1
    assert f"{f}: row 2: the text field 'text' is null" in capsys.readouterr().err
    pq.write_table(pa.table({"body": ["fine"]}), f)
    assert main(["encode", "--input", str(f), "--output", str(tmp_path / "o")]) == 1
    assert "no column 'text' (columns: body)" in capsys.readouterr().err
    pq.write_table(pa.table({"text": [1, 2]}), f)
    assert main(["encode", "--input", str(f), "--output", str(tmp_path / "o")]) == 1
    assert "is int64, not a string column" in capsys.readouterr().err
    c = tmp_path / "a.csv"
    c.write_text("id,body\n1,x\n")
    assert main(["encode", "--input", str(c), "--output", str(tmp_path / "o")]) == 1
    assert "no column 'text' in the header (columns: id, body)" in capsys.readouterr().err
    for argv, message in [([str(tmp_path / "nothing*.jsonl")], "no file matches"),
                          ([str(tmp_path / "missing.txt")], "no such file"),
                          ([str(c), str(c)], "listed twice"),
                          ([str(tmp_path / "a.md")], "unknown format '.md'")]:
        (tmp_path / "a.md").write_text("x")
        assert main(["encode", "--input", *argv, "--output", str(tmp_path / "o")]) == 1
        assert message in capsys.readouterr().err
    t = tmp_path / "a.txt"
    t.write_text("x\n")
    assert main(["encode", "--input", str(t), "--id-field", "id", "--output", str(tmp_path / "o")]) == 1
    assert "plain text" in capsys.readouterr().err


def test_on_error_skip_counts_in_the_manifest(tmp_path, enc):
    f, c = tmp_path / "a.jsonl", tmp_path / "b.csv"
    f.write_text(_jsonl(GOOD, "{oops", GOOD, '{"text": ""}', GOOD))
    c.write_text("text,id\nfine,1\nfine,2,3\nfine,4\n")
    out = tmp_path / "vectors"  # inside the input folder: its shards are not inputs
    m = encode_corpus([str(tmp_path)], out, on_error="skip", keep_fields=["text"], encoder=enc, shard_size=3,
                      log=lambda *a: None)
    t, _ = _table(out)
    assert t.column("row").to_pylist() == [0, 2, 4, 5, 7]  # input positions: the skipped ones keep theirs
    assert t.column("text").to_pylist() == ["a fine text"] * 3 + ["fine"] * 2  # the text itself, kept
    assert m["rows"] == 5 and m["skipped"] == 3 and m["input_rows"] == 8
    assert [e.split(": ")[0] for e in m["skipped_examples"]] == [f"{f}:2", f"{f}:4", f"{c}:3"]
    logged = []
    encode_corpus([str(tmp_path)], out, on_error="skip", keep_fields=["text"], encoder=enc, shard_size=3,
                  log=logged.append)
    assert "already complete" in logged[0]
    # shards of one row: those of the bad records are empty files, and the folder still reads as one table
    m1 = encode_corpus([str(f), str(c)], tmp_path / "ones", on_error="skip", encoder=enc, shard_size=1,
                       log=lambda *a: None)
    assert len(m1["shards"]) == 8 and [s["rows"] for s in m1["shards"]] == [1, 0, 1, 0, 1, 1, 0, 1]
    assert _table(tmp_path / "ones")[0].column("row").to_pylist() == [0, 2, 4, 5, 7]
    with pytest.raises(ValueError, match="two 'id' columns"):
        encode_corpus([str(f)], tmp_path / "o2", id_field="id", keep_fields=["id"], encoder=enc)


# ------------------------------------------------------------------------------------------- resume

def test_another_job_behind_the_output_is_refused(tmp_path, enc, minilm_dir):
    f = tmp_path / "a.txt"
    f.write_text("\n".join(_texts(6, seed=3)) + "\n")
    out = tmp_path / "out"
    run = dict(log=lambda *a: None, shard_size=4)
    encode_corpus([str(f)], out, encoder=enc, **run)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    logged = []
    encode_corpus([str(f)], out, encoder=enc, shard_size=4, log=logged.append)  # complete: nothing redone
    assert "already complete" in logged[0] and first == {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}

    other = tmp_path / "other-model"  # the same files but one: another model
    other.mkdir()
    for p in minilm_dir.iterdir():
        (other / p.name).symlink_to(p)
    (other / "config_sentence_transformers.json").unlink()
    (other / "config_sentence_transformers.json").write_text("{}")
    with pytest.raises(JobMismatch, match="the model differs"):
        encode_corpus([str(f)], out, model=str(other), dtype=torch.float32, **run)
    with pytest.raises(JobMismatch, match=r"--dtype differs \('bfloat16' here, 'float32' there\)"):
        encode_corpus([str(f)], out, model=str(minilm_dir), dtype="bfloat16", **run)
    with pytest.raises(JobMismatch, match=r"--max-length .* differs \(64 here, 256 there\)"):
        encode_corpus([str(f)], out, max_length=64, dtype=torch.float32, **run)
    with pytest.raises(JobMismatch, match="--shard-size differs"):
        encode_corpus([str(f)], out, encoder=enc, log=lambda *a: None, shard_size=5)
    f.write_text("\n".join(_texts(7, seed=3)) + "\n")
    with pytest.raises(JobMismatch, match=f"the input {f} changed.*--overwrite"):
        encode_corpus([str(f)], out, encoder=enc, **run)
    m = encode_corpus([str(f)], out, encoder=enc, overwrite=True, **run)
    assert m["rows"] == 7 and _table(out)[0].num_rows == 7
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.me").write_text("x")
    with pytest.raises(JobMismatch, match="holds no fastbert job"):
        encode_corpus([str(f)], foreign, encoder=enc, overwrite=True, **run)
    assert (foreign / "keep.me").exists()


def test_missing_shards_are_redone_and_the_rest_kept(tmp_path, enc):
    f = tmp_path / "a.jsonl"
    texts = _texts(20, seed=4)
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    encode_corpus([str(f)], out, encoder=enc, shard_size=4, log=lambda *a: None)
    _, want = _table(out)
    for name in ("part-000001.parquet", "part-000003.parquet", "_manifest.json"):
        (out / name).unlink()
    (out / ".part-000003.parquet.999.tmp").write_bytes(b"half a shard")  # as a killed writer leaves it
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    logged = []
    encode_corpus([str(f)], out, encoder=enc, shard_size=4, log=logged.append)
    assert "resuming: 3 of 5 shards already written" in logged[0]
    assert not list(out.glob(".*.tmp"))
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items())
    t, emb = _table(out)
    assert t.column("row").to_pylist() == list(range(20))
    np.testing.assert_array_equal(emb, want)


def _cli(*args):
    return [sys.executable, "-m", "fastbert.cli", "encode", *args]


def _wait_for_shards(proc, out, n, timeout=120):
    t0 = time.monotonic()
    while len(list(out.glob("part-*.parquet"))) < n:
        if proc.poll() is not None:
            raise AssertionError(f"the job ended (rc {proc.returncode}) before {n} shards were written: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no {n} shards after {timeout} s")
        time.sleep(0.01)


def test_resume_after_sigkill_at_random_points(tmp_path, minilm_dir):  # minilm_dir: skip without the model
    rng = np.random.default_rng()  # fresh points every run; the seed is in the failure message
    seed = int(rng.integers(1 << 31))
    rng = np.random.default_rng(seed)
    texts = _texts(240, seed=seed % 1000, max_words=20)
    f = tmp_path / "big.jsonl"
    f.write_text("".join(json.dumps({"text": t, "id": f"t{i}"}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    args = _cli("--input", str(f), "--output", str(out), "--id-field", "id", "--shard-size", "15", "--batch-size",
                "8", "--dtype", "float32")
    # one torch thread: the same numbers in every run, and no OpenMP spinning on a shared 2-core machine
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed_at = []
    for target in (2, 5):  # killed after `target` shards plus a random moment: mid-shard, mid-write, anywhere
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        _wait_for_shards(proc, out, target)
        time.sleep(float(rng.uniform(0, 0.15)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: the job ended before the kill"
        killed_at.append(len(list(out.glob("part-*.parquet"))))
        assert not (out / "_manifest.json").exists()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {killed_at[-1]} of 16 shards already written" in done.stdout, (seed, done.stdout)

    t, emb = _table(out)
    rows = t.column("row").to_pylist()
    assert rows == list(range(240)), f"seed {seed}: rows missing or repeated"
    assert t.column("id").to_pylist() == [f"t{i}" for i in range(240)]
    # the vectors of one uninterrupted run of the same command
    ref = tmp_path / "ref"
    whole = subprocess.run([str(ref) if a == str(out) else a for a in args], capture_output=True, text=True, timeout=300,
                           env=env)
    assert whole.returncode == 0, whole.stderr
    _, want = _table(ref)
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-6, err_msg=f"seed {seed}")
    assert json.loads((out / "_manifest.json").read_text())["rows"] == 240


def test_import_fastbert_imports_neither_pyarrow_nor_ray():
    code = ("import sys, fastbert, fastbert.cli, fastbert.corpus; "
            "print(sorted(m for m in ('pyarrow', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out
