"""`fastbert serve` end to end: a real server process on 127.0.0.1 (a free port), called with the OpenAI Python
SDK and httpx; vectors compared with sentence-transformers' (fp32 server); every error path; 429 under a
burst; SIGTERM with requests in flight.

Two server processes: ``server`` (API key, small limits: batches of 512 tokens, 16 inputs per request, 100 kB
bodies) and ``busy_server`` (32 inputs in flight at most, 256-token batches: easy to fill), stopped by the
SIGTERM test.
"""
import asyncio
import base64
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")
st = pytest.importorskip("sentence_transformers")

KEY = "test-key-7f3a"
AUTH = {"Authorization": f"Bearer {KEY}"}
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "Ein Mann isst.", "naïve café — déjà vu!", "x"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m fastbert.serve` on a free port; waits for /health."""

    def __init__(self, tmp_path, *args):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"server-{self.port}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "fastbert.serve", "--port", str(self.port),
                                          "--dtype", "float32", "--log-level", "warning", *args],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not come up in 120 s:\n{self.log.read_text()}")

    def metric(self, line_start):
        """The value of the first /metrics line starting with ``line_start``."""
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def paragraphs():
    from fastbert.benchmarks.common import _corpus_paragraphs

    paras = _corpus_paragraphs(Path("/usr/share/doc"), max_files=100, max_paragraphs=200)
    if len(paras) < 40:
        pytest.skip("too little English text under /usr/share/doc")
    return paras


@pytest.fixture(scope="module")
def long_text(paragraphs, st_model):
    text = " ".join(paragraphs[:30])
    assert len(st_model.tokenizer(text)["input_ids"]) > 400  # longer than max_seq_length (256)
    return text


@pytest.fixture(scope="module")
def st_model(minilm_dir):
    return st.SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="module")
def server(tmp_path_factory, minilm_dir):
    s = Server(tmp_path_factory.mktemp("serve"), "--api-key", KEY, "--max-batch-tokens", "512",
               "--max-client-batch-size", "16", "--max-concurrent-requests", "64", "--payload-limit", "100000")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory, minilm_dir):
    s = Server(tmp_path_factory.mktemp("serve"), "--max-batch-tokens", "256", "--max-client-batch-size", "16",
               "--max-concurrent-requests", "32")
    yield s
    s.stop()


def _client(server, key=KEY):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def _close(a, b, atol=2e-5):
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    assert a.shape == b.shape
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() >= 0.9999, cos.min()
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


# ---- vectors -----------------------------------------------------------------------------------------------------
def test_openai_sdk_base64_and_float_match_sentence_transformers(server, st_model, paragraphs, long_text):
    texts = SENTENCES + paragraphs[:8] + [long_text]
    ref = st_model.encode(texts)
    client = _client(server)
    got = {}
    for fmt in ("base64", "float"):  # the SDK asks for base64 unless told
        kwargs = {} if fmt == "base64" else {"encoding_format": "float"}
        r = client.embeddings.create(model="any", input=texts, **kwargs)
        assert [d.index for d in r.data] == list(range(len(texts)))
        got[fmt] = np.array([d.embedding for d in r.data], dtype=np.float32)
        _close(got[fmt], ref)
        n_tokens = sum(min(len(ids), 256) for ids in st_model.tokenizer(texts)["input_ids"])
        assert r.usage.prompt_tokens == r.usage.total_tokens == n_tokens
        assert r.model == "sentence-transformers/all-MiniLM-L6-v2"
    np.testing.assert_array_equal(got["base64"], got["float"])


def test_base64_is_little_endian_float32(server, st_model):
    r = httpx.post(server.url + "/v1/embeddings", headers=AUTH,
                   json={"input": SENTENCES[0], "model": "m", "encoding_format": "base64"})
    assert r.status_code == 200
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    _close(vec[None], st_model.encode([SENTENCES[0]]))


def test_token_id_inputs_embed_like_their_text(server, st_model):
    """Token ids are the model's input as given: /tokenize's ids (with [CLS]/[SEP]) embed like the text."""
    ids = [st_model.tokenizer(t)["input_ids"] for t in SENTENCES[:3]]
    ref = st_model.encode(SENTENCES[:3])
    client = _client(server)
    one = client.embeddings.create(model="m", input=ids[0], encoding_format="float")  # a list of ids
    many = client.embeddings.create(model="m", input=ids, encoding_format="float")  # a list of lists
    assert len(one.data) == 1 and one.usage.prompt_tokens == len(ids[0])
    _close([one.data[0].embedding], ref[:1])
    _close([d.embedding for d in many.data], ref)
    mixed = httpx.post(server.url + "/embed", headers=AUTH, json={"inputs": [SENTENCES[0], ids[1], SENTENCES[2]]})
    _close(mixed.json(), ref)


def test_dimensions_cut_then_renormalise(server, st_model):
    r = _client(server).embeddings.create(model="m", input=SENTENCES[:2], dimensions=32, encoding_format="float")
    full = st_model.encode(SENTENCES[:2])[:, :32]
    _close([d.embedding for d in r.data], full / np.linalg.norm(full, axis=-1, keepdims=True))


def test_tei_embed_normalize_and_truncation(server, st_model, paragraphs, long_text):
    texts = paragraphs[8:14] + [long_text]
    url = server.url + "/embed"
    r = httpx.post(url, headers=AUTH, json={"inputs": texts})
    _close(r.json(), st_model.encode(texts))
    # normalize=false: the pipeline without its Normalize module
    unnormalized = st.SentenceTransformer(modules=[st_model[0], st_model[1]], device="cpu")
    raw = httpx.post(url, headers=AUTH, json={"inputs": texts, "normalize": False}).json()
    _close(raw, unnormalized.encode(texts), atol=1e-4)
    assert abs(np.linalg.norm(raw[0]) - 1) > 0.1
    # a single string -> a list of one embedding
    single = httpx.post(url, headers=AUTH, json={"inputs": texts[0]}).json()
    assert len(single) == 1 and len(single[0]) == 384
    # truncation_direction=Left keeps the end of a long text, as HF's truncation_side="left"
    left = httpx.post(url, headers=AUTH, json={"inputs": [long_text], "truncation_direction": "Left"}).json()
    st_model.tokenizer.truncation_side = "left"
    try:
        ref_left = st_model.encode([long_text])
    finally:
        st_model.tokenizer.truncation_side = "right"
    _close(left, ref_left)
    assert float(np.dot(left[0], r.json()[-1])) < 0.99  # really another cut


def test_client_batch_past_the_token_budget_is_split_and_reassembled(server, st_model, paragraphs, long_text):
    texts = [long_text] * 4 + paragraphs[14:26]  # 16 inputs, > 1024 tokens: at least 3 batches of <= 512
    n_tokens = sum(min(len(ids), 256) for ids in st_model.tokenizer(texts)["input_ids"])
    assert n_tokens > 1024
    before = server.metric("fastbert_batch_tokens_count")
    r = httpx.post(server.url + "/v1/embeddings", headers=AUTH, json={"input": texts, "model": "m"}, timeout=60)
    assert r.status_code == 200
    _close([d["embedding"] for d in r.json()["data"]], st_model.encode(texts))
    assert server.metric("fastbert_batch_tokens_count") - before >= 3
    # no batch ever passed the budget
    assert server.metric('fastbert_batch_tokens_bucket{le="512.0"}') == server.metric("fastbert_batch_tokens_count")


def test_tokenize_matches_hf_tokenizer(server, st_model):
    texts = ["Hello World, naïve café!", SENTENCES[1]]
    r = httpx.post(server.url + "/tokenize", headers=AUTH, json={"inputs": texts})
    assert r.status_code == 200
    for text, tokens, ref in zip(texts, r.json(), st_model.tokenizer(texts, return_offsets_mapping=True)["input_ids"]):
        assert [t["id"] for t in tokens] == ref
        assert tokens[0]["special"] and tokens[0]["text"] == "[CLS]" and tokens[0]["start"] is None
        for t in tokens[1:-1]:
            assert not t["special"] and t["text"] == text[t["start"]:t["stop"]]
    plain = httpx.post(server.url + "/tokenize", headers=AUTH, json={"inputs": "Hello", "add_special_tokens": False})
    assert [t["id"] for t in plain.json()[0]] == st_model.tokenizer("Hello", add_special_tokens=False)["input_ids"]


def test_info_health_metrics(server):
    info = httpx.get(server.url + "/info", headers=AUTH).json()
    assert info["dimension"] == 384 and info["max_input_length"] == 256 and info["model_dtype"] == "float32"
    assert info["backend"] in ("torch", "triton", "cpu") and info["version"] and info["max_batch_tokens"] == 512
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.url + "/metrics").text
    for family in ("fastbert_request_total", "fastbert_request_duration_seconds",
                   "fastbert_tokenization_duration_seconds", "fastbert_queue_duration_seconds",
                   "fastbert_inference_duration_seconds", "fastbert_batch_size", "fastbert_batch_tokens",
                   "fastbert_queue_size", "fastbert_inputs_in_flight"):
        assert f"# TYPE {family} " in text, family
    assert server.metric('fastbert_request_total{outcome="success",route="/health"}') >= 1


# ---- errors ------------------------------------------------------------------------------------------------------
ERRORS = [
    ("/v1/embeddings", {"model": "m"}, 422, "'input' is required"),
    ("/v1/embeddings", {"input": [], "model": "m"}, 400, "empty list"),
    ("/v1/embeddings", {"input": "", "model": "m"}, 400, "empty string"),
    ("/v1/embeddings", {"input": ["ok", ""], "model": "m"}, 400, "input[1]' is an empty string"),
    ("/v1/embeddings", {"input": 5, "model": "m"}, 422, "got integer"),
    ("/v1/embeddings", {"input": [101, 2.5], "model": "m"}, 422, "input[1] is number 2.5"),
    ("/v1/embeddings", {"input": [[101, 102], [101, "a"]], "model": "m"}, 422, "input[1]' must be a list of integer"),
    ("/v1/embeddings", {"input": ["a", None], "model": "m"}, 422, "input[1]' must be a string"),
    ("/v1/embeddings", {"input": [[101, 10 ** 6]], "model": "m"}, 422, "outside this model's vocabulary"),
    ("/v1/embeddings", {"input": "a", "model": "m", "encoding_format": "int8"}, 422, "'encoding_format'"),
    ("/v1/embeddings", {"input": "a", "model": "m", "dimensions": 0}, 422, "'dimensions'"),
    ("/v1/embeddings", {"input": "a", "model": "m", "dimensions": 385}, 422, "'dimensions'"),
    ("/v1/embeddings", {"input": "a", "model": 3}, 422, "'model' must be a string"),
    ("/v1/embeddings", {"input": "a", "model": "m", "temperature": 1}, 422, "unknown field(s) ['temperature']"),
    ("/v1/embeddings", {"input": ["a"] * 17, "model": "m"}, 413, "--max-client-batch-size (16)"),
    ("/v1/embeddings", [1, 2], 422, "must be a JSON object"),
    ("/embed", {"inputs": "a", "normalize": "yes"}, 422, "'normalize' must be true or false"),
    ("/embed", {"inputs": "a", "truncation_direction": "middle"}, 422, "'truncation_direction'"),
    ("/embed", {"inputs": "a", "prompt_name": "query"}, 422, "'prompt_name' is not supported"),
    ("/embed", {"inputs": [[101] + [1000] * 300 + [102]]}, 422, "token ids are never truncated"),
    ("/embed", {"input": "a"}, 422, "unknown field(s) ['input']"),
    ("/embed", {"inputs": []}, 400, "empty list"),
    ("/tokenize", {"inputs": [101, 102]}, 422, "must be a string"),
]


@pytest.mark.parametrize("route, body, status, message", ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_input_gets_a_json_4xx_naming_it(server, route, body, status, message):
    r = httpx.post(server.url + route, headers=AUTH, json=body)
    assert r.status_code == status, r.text
    body = r.json()
    if route.startswith("/v1/"):  # OpenAI's error shape
        assert message in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    else:  # TEI's
        assert message in body["error"] and body["error_type"] in ("validation", "empty", "too_large")


def test_too_long_text_with_truncation_off_is_422_and_names_it(server, long_text):
    r = httpx.post(server.url + "/embed", headers=AUTH, json={"inputs": ["short", long_text], "truncate": False})
    assert r.status_code == 422 and "input 1 is longer than this model's max_seq_length (256" in r.json()["error"]
    ok = httpx.post(server.url + "/embed", headers=AUTH, json={"inputs": ["short"], "truncate": False})
    assert ok.status_code == 200


def test_openai_sdk_raises_its_own_error_classes(server):
    client = _client(server)
    with pytest.raises(openai.BadRequestError, match="empty string"):
        client.embeddings.create(model="m", input="")
    with pytest.raises(openai.UnprocessableEntityError, match="'dimensions'"):
        client.embeddings.create(model="m", input="a", dimensions=1000)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        _client(server, key="wrong").embeddings.create(model="m", input="a")


def test_malformed_json_and_unknown_routes(server):
    for body in (b"{oops", b'{"inputs": "caf\xe9"}', b'{"inputs": ' + b"[" * 30000 + b"]" * 30000 + b"}"):
        r = httpx.post(server.url + "/embed", headers={**AUTH, "content-type": "application/json"}, content=body)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]  # not UTF-8; nested past recursion
    for route in ("/embed", "/tokenize"):  # a lone surrogate escape: valid JSON, not text
        r = httpx.post(server.url + route, headers=AUTH, content=b'{"inputs": ["ok", "\\ud800 abc"]}')
        assert r.status_code == 422 and "'inputs[1]' is not valid Unicode text" in r.json()["error"]
    assert httpx.get(server.url + "/nope", headers=AUTH).status_code == 404
    r = httpx.get(server.url + "/v1/embeddings", headers=AUTH)
    assert r.status_code == 405 and "message" in r.json()["error"]


def test_payload_limit_is_413_declared_or_streamed(server):
    big = {"inputs": ["word " * 12000]}  # ~60 kB of text, then 2 of them: past 100 kB
    assert httpx.post(server.url + "/embed", headers=AUTH, json=big).status_code == 200
    r = httpx.post(server.url + "/embed", headers=AUTH, json={"inputs": big["inputs"] * 2})
    assert r.status_code == 413 and "--payload-limit (100000)" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        yield b'{"inputs": ["'
        for _ in range(30):
            yield b"word " * 1000
        yield b'"]}'

    r = httpx.post(server.url + "/embed", headers=AUTH, content=chunks())
    assert r.status_code == 413 and r.json()["error_type"] == "too_large"


def test_api_key_required_except_health_and_metrics(server):
    for method, route, body in [("POST", "/v1/embeddings", {"input": "a"}), ("POST", "/embed", {"inputs": "a"}),
                                ("POST", "/tokenize", {"inputs": "a"}), ("GET", "/info", None)]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = httpx.request(method, server.url + route, json=body, headers=headers)
            assert r.status_code == 401, (route, headers)
            assert "API key" in str(r.json()["error"])
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert server.metric('fastbert_request_total{outcome="unauthorized",route="/info"}') >= 3


def test_no_cors_headers_unless_asked(server):
    r = httpx.post(server.url + "/embed", headers={**AUTH, "Origin": "http://evil.example"}, json={"inputs": "a"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = httpx.options(server.url + "/embed", headers={"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


def test_sigint_stops_the_idle_server_with_exit_0(server):
    """Ctrl-C: a clean stop, no KeyboardInterrupt traceback (the last test of this server)."""
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(30) == 0
    assert "Traceback" not in server.log.read_text()


# ---- load: 429 at once, SIGTERM with requests in flight -----------------------------------------------------------
def test_full_queue_answers_429_at_once(busy_server, long_text):
    """32 inputs may be in flight: 12 simultaneous requests of 16 long texts cannot all be admitted."""
    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            async def one():
                t0 = time.perf_counter()
                r = await client.post(busy_server.url + "/embed", json={"inputs": [long_text] * 16})
                return r, time.perf_counter() - t0
            return await asyncio.gather(*(one() for _ in range(12)))

    results = asyncio.run(burst())
    codes = [r.status_code for r, _ in results]
    assert set(codes) <= {200, 429} and codes.count(429) >= 1 and codes.count(200) >= 2, codes
    for r, _ in results:
        if r.status_code == 429:
            assert "--max-concurrent-requests (32" in r.json()["error"] and r.json()["error_type"] == "overloaded"
            assert r.headers["retry-after"] == "1"
        else:
            assert np.asarray(r.json()).shape == (16, 384)
    fastest_ok = min(dt for r, dt in results if r.status_code == 200)
    slowest_429 = max(dt for r, dt in results if r.status_code == 429)
    assert slowest_429 < fastest_ok  # refused at once, not after waiting
    assert busy_server.metric('fastbert_request_total{outcome="overloaded",route="/embed"}') == codes.count(429)


def test_sigterm_finishes_in_flight_requests_and_exits_0(busy_server, st_model, paragraphs, long_text):
    texts = [long_text] * 8 + paragraphs[:8]  # 2 requests x 16 inputs, >= 8 batches of <= 256 tokens each
    ref = st_model.encode(texts)

    async def scenario():
        async with httpx.AsyncClient(timeout=120) as client:
            tasks = [asyncio.create_task(client.post(busy_server.url + "/embed", json={"inputs": texts}))
                     for _ in range(2)]
            deadline = time.monotonic() + 30
            while busy_server.metric("fastbert_inputs_in_flight") < 32:  # both requests admitted
                assert time.monotonic() < deadline and not any(t.done() for t in tasks), "requests never in flight"
                await asyncio.sleep(0.01)
            busy_server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            refused = False
            try:  # a new connection is refused while the admitted requests finish
                async with httpx.AsyncClient(timeout=5) as fresh:
                    await fresh.get(busy_server.url + "/health")
            except httpx.TransportError:
                refused = True
            return await asyncio.gather(*tasks), refused

    responses, refused = asyncio.run(scenario())
    for r in responses:
        assert r.status_code == 200
        _close(r.json(), ref)
    assert refused
    assert busy_server.proc.wait(30) == 0


# ---- start-up ------------------------------------------------------------------------------------------------------
def test_bad_limits_fail_at_start_naming_them(capsys, minilm_dir):
    from fastbert.cli import main

    assert main(["serve", "--max-client-batch-size", "64", "--max-concurrent-requests", "32"]) == 1
    assert "max_client_batch_size (64) is more than max_concurrent_requests (32)" in capsys.readouterr().err
    assert main(["serve", "--max-batch-tokens", "100"]) == 1  # less than MiniLM's max_seq_length
    assert "max_batch_tokens (100) must be at least the model's max_seq_length (256)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--max-batch-tokens", "0"])
    assert "expected a positive integer" in capsys.readouterr().err


def test_import_fastbert_imports_no_server_package():
    code = ("import sys, fastbert; fastbert.SentenceEncoder; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('uvicorn', 'starlette', 'prometheus_client', 'httpx', 'openai') or m.startswith('fastbert.serve')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
