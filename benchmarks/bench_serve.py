"""Load benchmark of `fastbert serve`: N concurrent clients, each sending one text per request, over loopback.

Three numbers on the same texts (paragraphs of the plain-text documents under /usr/share/doc):
1. in-process ``SentenceEncoder.encode(texts, batch_size=32)``: the ceiling (no HTTP, no client);
2. `fastbert serve` (a subprocess on 127.0.0.1): N httpx asyncio clients, one text per request to
   /v1/embeddings (base64, as the OpenAI SDK asks), each sending its next text when its answer is back:
   texts/s, p50/p99 latency, and the server's own mean batch size (from /metrics). Goal: >= 80% of (1);
3. the same load against sentence-transformers behind a naive one-request-one-forward server (a tiny Starlette
   app below: each request runs ``SentenceTransformer.encode([text])`` on Starlette's thread pool, as a sync
   FastAPI endpoint does), for contrast.
4. with ``wrk`` on PATH (``apt install wrk``; skipped with a note otherwise): the same N connections from
   wrk, a C load generator that costs the shared cores next to nothing, for --wrk-seconds against each server
   (the same texts cycled, the same request bodies): closer to clients on other machines, which is how a
   server is used. The httpx clients of (2) spend ~2 ms of CPU per request on the same 2 cores as the server.
The server's embeddings are checked against (1) (cosine >= 0.9999) before anything is reported. Bounded: a
fixed number of texts, and every phase stops with an error past --time-limit seconds. Loopback only.

    python benchmarks/bench_serve.py --texts 384 --clients 32 --json benchmarks/results/serve_cpu_minilm.json

The client shares the machine's cores with the server (and, on a shared machine, with everyone else): the
numbers are for this machine as it was, load average included in the results. Each provider's CPU time is
reported too (``cpu_ms_per_text``: the server process's user + system seconds, all threads, per text; the
in-process run's own): on a machine shared with other jobs, a provider that runs more threads gets a larger
share of the cores, and texts/s alone would credit that to it.
"""
import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url, proc, timeout=180):
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} not healthy in {timeout} s")


def _stop(proc):
    proc.terminate()
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _b64_row(body):
    import numpy as np

    return np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")


def _as_array(body):
    import numpy as np

    return np.asarray(body, dtype=np.float32)


# provider -> (route, request body of one text, its embedding from the answer)
LOADS = {"fastbert_serve": ("/v1/embeddings", lambda t: {"input": t, "model": "m", "encoding_format": "base64"},
                            _b64_row),
         "naive_sentence_transformers_server": ("/embed", lambda t: {"text": t}, _as_array)}


async def _load(url, provider, texts, clients, time_limit):
    """``clients`` concurrent clients share the texts, one text per request; -> (seconds, latencies, rows)."""
    import httpx

    path, make_body, parse = LOADS[provider]
    rows, latencies, next_i = [None] * len(texts), [], 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=time_limit, limits=limits) as client:
        async def worker():
            nonlocal next_i
            while next_i < len(texts):
                i, next_i = next_i, next_i + 1
                t0 = time.perf_counter()
                r = await client.post(path, json=make_body(texts[i]))
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()
                rows[i] = parse(r.json())

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), time_limit)
        return time.perf_counter() - t0, latencies, rows


def _load_part(url, provider, texts, clients, time_limit):
    """One client process's share (run in a process pool)."""
    return asyncio.run(_load(url, provider, texts, clients, time_limit))


def load(pool, n_procs, url, provider, texts, clients, time_limit):
    """The load from ``n_procs`` client processes (one Python client tops out at a few hundred requests/s):
    text i goes to process i % n_procs, the clients are shared out; -> (seconds, latencies, rows in order)."""
    if n_procs == 1:
        return _load_part(url, provider, texts, clients, time_limit)
    parts = [texts[k::n_procs] for k in range(n_procs)]
    shares = [clients // n_procs + (k < clients % n_procs) for k in range(n_procs)]
    t0 = time.perf_counter()
    futures = [pool.submit(_load_part, url, provider, part, share, time_limit) for part, share in zip(parts, shares)]
    done = [f.result() for f in futures]
    seconds = time.perf_counter() - t0
    rows = [None] * len(texts)
    for k, (_, _, part_rows) in enumerate(done):
        rows[k::n_procs] = part_rows
    return seconds, [x for _, lat, _ in done for x in lat], rows


def _cpu_seconds(pid):
    """User + system CPU seconds of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _metric(url, name):
    import httpx

    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: fields[k].strip() for k in ("Model name", "CPU(s)", "Thread(s) per core", "Flags") if k in fields}


WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i + 1
  if i > #bodies then i = 1 end
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_RESULT %%d %%f %%d %%d %%f %%f\\n", summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


def wrk_load(url, provider, texts, clients, seconds, work_dir):
    """``wrk -t1 -c clients -d seconds`` posting the texts in turn (one per request) to ``provider``'s route:
    texts/s and p50/p99 latency; None when wrk is not installed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    path, make_body, _ = LOADS[provider]
    bodies, script = Path(work_dir) / f"{provider}.bodies", Path(work_dir) / f"{provider}.lua"
    bodies.write_text("".join(json.dumps(make_body(t)) + "\n" for t in texts))
    script.write_text(WRK_SCRIPT % (bodies, path))
    out = subprocess.run([wrk, "-t1", f"-c{clients}", f"-d{int(seconds)}s", "--timeout", "30s", "-s", str(script), url],
                         capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    requests, secs, errors, bad_status, p50, p99 = line.split()[1:]
    if int(errors) or int(bad_status):
        raise AssertionError(f"wrk against {provider}: {errors} socket errors, {bad_status} non-2xx answers")
    return {"texts_per_s": round(int(requests) / float(secs), 2), "requests": int(requests),
            "seconds": round(float(secs), 2), "latency_ms": {"p50": round(float(p50), 1), "p99": round(float(p99), 1)}}


def run(n_texts=384, clients=32, time_limit=300.0, dtype=None, naive=True, rounds=2, client_procs=1,
        wrk_seconds=10):
    import numpy as np
    import torch

    from fastbert import SentenceEncoder
    from fastbert.benchmarks.common import _corpus_paragraphs, environment

    texts = _corpus_paragraphs(Path("/usr/share/doc"), max_files=400, max_paragraphs=n_texts)
    if len(texts) < n_texts:
        raise RuntimeError(f"only {len(texts)} paragraphs under /usr/share/doc")
    encoder = SentenceEncoder(dtype=getattr(torch, dtype) if dtype else None)
    dtype = str(encoder.model.dtype).replace("torch.", "")
    result = {"texts": len(texts), "chars": sum(map(len, texts)), "clients": clients,
              "client_processes": client_procs, "rounds": rounds,
              "device": "cpu", "dtype": dtype,
              "note": "loopback: the load generator shares the CPU with the server. Providers timed round-robin, "
                      "medians reported"}
    load_before = os.getloadavg()[0]
    reference = encoder.encode(texts[:64], batch_size=32)

    # Both servers up for the whole run; each round times the three providers one after the other, so that a
    # change of the machine's load falls on all three.
    procs, urls, pool = {}, {}, None
    serve_cmd = [sys.executable, "-m", "fastbert.serve", "--log-level", "warning", "--dtype", dtype]
    try:
        ports = {"fastbert_serve": _free_port(), "naive_sentence_transformers_server": _free_port()}
        commands = {"fastbert_serve": serve_cmd + ["--port", str(ports["fastbert_serve"])]}
        if naive:
            commands["naive_sentence_transformers_server"] = [
                sys.executable, str(HERE), "--naive-server", str(ports["naive_sentence_transformers_server"])]
        for name, cmd in commands.items():
            urls[name] = f"http://127.0.0.1:{ports[name]}"
            procs[name] = subprocess.Popen(cmd)
        for name, url in urls.items():
            _wait_healthy(url, procs[name])
        if client_procs > 1:
            pool = ProcessPoolExecutor(client_procs, mp_context=multiprocessing.get_context("spawn"))
            list(pool.map(time.sleep, [0.1] * client_procs))  # started before anything is timed

        def http_round(name, some_texts):
            return load(pool, client_procs, urls[name], name, some_texts, clients, time_limit)

        for name in urls:  # warm-up
            http_round(name, texts[:clients])
        busy0 = _metric(urls["fastbert_serve"], "fastbert_inference_duration_seconds_sum")
        batches0 = _metric(urls["fastbert_serve"], "fastbert_batch_size_count")
        inputs0 = _metric(urls["fastbert_serve"], "fastbert_batch_size_sum")
        runs = {"in_process_encode": [], **{name: [] for name in urls}}
        cpu = {name: [] for name in runs}  # CPU seconds used: the server process's (all threads), the client's
        for _ in range(rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            encoder.encode(texts, batch_size=32)
            runs["in_process_encode"].append((time.perf_counter() - t0, None))
            cpu["in_process_encode"].append((time.process_time() - c0, None))
            for name in urls:
                s0, c0 = _cpu_seconds(procs[name].pid), time.process_time()
                seconds, latencies, rows = http_round(name, texts)
                runs[name].append((seconds, latencies))
                cpu[name].append((_cpu_seconds(procs[name].pid) - s0, time.process_time() - c0))
                if name == "fastbert_serve":
                    got = np.stack(rows[:64])
                    cos = (got * reference).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(reference, axis=-1)
                    if cos.min() < 0.9999:
                        raise AssertionError(f"the server's embeddings differ from encode's (min cosine "
                                             f"{cos.min():.6f})")
        batches = _metric(urls["fastbert_serve"], "fastbert_batch_size_count") - batches0
        inputs = _metric(urls["fastbert_serve"], "fastbert_batch_size_sum") - inputs0
        model_seconds = _metric(urls["fastbert_serve"], "fastbert_inference_duration_seconds_sum") - busy0
        light = {}
        if wrk_seconds > 0:
            with tempfile.TemporaryDirectory(prefix="bench_serve_wrk_") as work:
                for name in urls:
                    light[name] = wrk_load(urls[name], name, texts, clients, wrk_seconds, work)
    finally:
        exit_codes = {name: _stop(proc) for name, proc in procs.items()}
        if pool is not None:
            pool.shutdown()

    for name, rs in runs.items():
        med = statistics.median(s for s, _ in rs)
        entry = {"seconds": [round(s, 3) for s, _ in rs], "texts_per_s": round(len(texts) / med, 2)}
        lat = [x for _, latencies in rs if latencies for x in latencies]
        if lat:
            entry["latency_ms"] = {"p50": round(1e3 * _percentile(lat, 50), 1),
                                   "p99": round(1e3 * _percentile(lat, 99), 1),
                                   "mean": round(1e3 * statistics.mean(lat), 1)}
        server_cpu = statistics.median(c for c, _ in cpu[name])
        entry["cpu_ms_per_text"] = round(1e3 * server_cpu / len(texts), 2)
        entry["cpu_cores_busy"] = round(server_cpu / med, 2)  # CPU share it got: the machine is shared
        if name != "in_process_encode" and client_procs == 1:
            entry["client_cpu_ms_per_text"] = round(1e3 * statistics.median(c for _, c in cpu[name]) / len(texts), 2)
        result[name] = entry
    result["in_process_encode"]["batch_size"] = 32
    result["fastbert_serve"].update({
        "batches": int(batches), "mean_batch_size": round(inputs / max(batches, 1), 2),
        # the model thread's share of the wall time (near 1: the server is model-bound, and what is missing
        # against in-process encode is the model's own speed with fewer cores free and smaller batches)
        "model_busy": round(model_seconds / sum(s for s, _ in runs["fastbert_serve"]), 3),
        "min_cosine_vs_encode": float(cos.min()), "exit_code_after_sigterm": exit_codes["fastbert_serve"],
        "command": "fastbert serve " + " ".join(serve_cmd[3:])})
    if naive:
        result["naive_sentence_transformers_server"]["how"] = (
            "Starlette + uvicorn, SentenceTransformer.encode([text]) per request on Starlette's thread pool (a "
            "sync FastAPI endpoint), fp32")
    encode_rate = result["in_process_encode"]["texts_per_s"]
    if wrk_seconds <= 0:
        result["wrk"] = "not run (--wrk-seconds 0)"
    elif any(v is None for v in light.values()):
        result["wrk"] = "not run: wrk is not installed (apt install wrk)"
    else:
        result["wrk"] = {name: {**v, "over_encode": round(v["texts_per_s"] / encode_rate, 3)}
                         for name, v in light.items()}
        result["wrk"]["how"] = (f"wrk -t1 -c{clients} -d{wrk_seconds}s, the same texts cycled, one per request; "
                                "in-process encode from the httpx rounds above")
    load_after = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    result["load_avg"] = [round(load_before, 2), round(load_after, 2)]
    if load_before > 0.5 * cores:
        result["note"] += (f"; load average {load_before:.1f} on {cores} cores before the run: other jobs shared "
                           "the machine, the numbers are noisy")
    # CPU per text, in-process over the server's: how much of the model's work the server's own overhead
    # (HTTP, JSON, base64, tokenization handoff, smaller batches) adds, whatever the load generator costs
    result["encode_cpu_over_serve_cpu"] = round(result["in_process_encode"]["cpu_ms_per_text"] /
                                                result["fastbert_serve"]["cpu_ms_per_text"], 3)
    result["serve_over_encode"] = round(result["fastbert_serve"]["texts_per_s"] /
                                        result["in_process_encode"]["texts_per_s"], 3)
    env = environment(torch.device("cpu"))
    env.update({"lscpu": _lscpu(), "versions": {name: _version(name) for name in (
        "sentence-transformers", "uvicorn", "starlette", "httpx", "prometheus-client")}})
    result["environment"] = env
    return result


def _version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def naive_server(port):
    """sentence-transformers behind one-request-one-forward: no batching, no queue."""
    import uvicorn
    from sentence_transformers import SentenceTransformer
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fastbert.assets import default_model_dir

    model = SentenceTransformer(str(default_model_dir()), device="cpu")

    async def embed(request):
        text = (await request.json())["text"]
        return JSONResponse((await run_in_threadpool(model.encode, [text]))[0].tolist())

    async def health(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/embed", embed, methods=["POST"]), Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=384)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--client-processes", type=int, default=1,
                    help="spread the clients over this many processes (one Python httpx client process tops out at "
                         "a few hundred requests/s: use several on a GPU)")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds each phase may take at most")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="fastbert's dtype, in process and in the server (default: the encoder's default)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive sentence-transformers server")
    ap.add_argument("--wrk-seconds", type=int, default=10,
                    help="seconds of wrk load per server when wrk is installed (0: none)")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--naive-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.naive_server:
        return naive_server(args.naive_server)
    res = run(args.texts, args.clients, args.time_limit, args.dtype, naive=not args.no_naive, rounds=args.rounds,
              client_procs=args.client_processes, wrk_seconds=args.wrk_seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "environment"}, indent=2, default=str))


if __name__ == "__main__":
    os.environ.setdefault("FASTBERT_NO_TRANSFORMERS", "1")
    main()
