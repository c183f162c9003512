"""The Ray engine on a local Ray with 2 CPUs (started once for this module, shut down after): the corpus job
gives the local engine's rows and vectors, and ``fastbert.ray.embed`` adds the encoder's embeddings to a Ray
Dataset. Skipped without ray.

Run by tests/test_corpus_ray.py in a pytest process of its own (a Ray driver leaves dozens of threads, and
so malloc arenas, in its process, which the RSS-growth check of tests/test_tokenizer_corpus.py would see);
``pytest tests/ray_cases.py`` runs it directly."""
import json

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import fastbert.ray  # noqa: E402
from fastbert import SentenceEncoder  # noqa: E402
from fastbert.corpus import encode_corpus  # noqa: E402

WORDS = "the of science cookie kernel theory quantum apple river idea music über café 東京 fox lazy".split()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _texts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 30)))) for _ in range(n)]


def _table(out):
    t = pads.dataset(str(out), format="parquet").to_table()
    return t, t.column("embedding").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)


def test_ray_engine_matches_the_local_engine(tmp_path, local_ray, minilm_dir):
    texts = _texts(45, seed=11)
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps({"text": t, "id": f"x{i}", "n": i}) + "\n" for i, t in enumerate(texts)))
    run = dict(id_field="id", keep_fields=["n"], shard_size=8, batch_size=4, dtype=torch.float32,
               model=str(minilm_dir), log=lambda *a: None)
    local = encode_corpus([str(f)], tmp_path / "local", **run)
    remote = encode_corpus([str(f)], tmp_path / "ray", engine="ray", ray_workers=2, ray_cpus_per_worker=1, **run)
    a, ea = _table(tmp_path / "local")
    b, eb = _table(tmp_path / "ray")
    assert a.schema == b.schema
    assert b.column("row").to_pylist() == list(range(45))
    for name in ("row", "id", "n"):
        assert a.column(name).to_pylist() == b.column(name).to_pylist()
    np.testing.assert_allclose(eb, ea, rtol=0, atol=1e-5)
    assert [s["file"] for s in remote["shards"]] == [s["file"] for s in local["shards"]]
    # the actors wrote the shards themselves (the driver only the manifest)
    workers = {json.loads(pq.read_schema(tmp_path / "ray" / s["file"]).metadata[b"fastbert"])["worker"]
               for s in remote["shards"]}
    assert 1 <= len(workers) <= 2 and all(":" in w for w in workers), workers


def test_embed_adds_the_encoders_embeddings(local_ray, minilm_dir):
    texts = _texts(30, seed=12)
    ds = ray.data.from_items([{"text": t, "k": i} for i, t in enumerate(texts)])
    out = fastbert.ray.embed(ds, text_column="text", model=minilm_dir, dtype=torch.float32, workers=1,
                             cpus_per_worker=2, rows_per_call=7)
    out = pa.concat_tables(ray.get(out.to_arrow_refs()))
    assert out.column_names == ["text", "k", "embedding"] and out.schema.field("embedding").type == pa.list_(
        pa.float32(), 384)
    out = out.sort_by("k")
    assert out.column("text").to_pylist() == texts
    emb = out.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(texts), -1)
    want = SentenceEncoder(minilm_dir, device="cpu", dtype=torch.float32).encode(texts)
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no column 'body'"):
        fastbert.ray.embed(ds, text_column="body")
    actor = fastbert.ray.Encoder(model=minilm_dir, dtype="float32")  # the actor's class, called here
    for bad, what in (("", "empty"), (None, "null")):
        with pytest.raises(ValueError, match=f"holds {what} text \\(row 1 of a batch\\)"):
            actor(pa.table({"text": ["fine", bad]}))
