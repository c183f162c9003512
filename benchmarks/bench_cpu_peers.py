"""Benchmark: fastbert's sentence embeddings against the CPU runtimes a user would otherwise pick, on the same
texts, one run (``python -m fastbert.benchmarks.bench_encode --peers``; this module's ``main`` underneath).

The runtimes and how each is built: ``cpu_peers.py``. Here: the corpus, the fidelity check, the measurement
and the results files.

1. Corpus (``peer_corpus``): about 1,200 real mixed-language documents: runs of consecutive paragraphs of the
   Debian documentation under /usr/share/doc (English, some longer than 256 tokens) and German, Spanish and
   Italian fortune cookies (Debian's fortunes-de/-es/-it, fetched by scripts/get_text_data.sh into data/;
   without them the corpus is English only and the results say so).
2. Each runtime in turn: build, warm up on one batch, then embed every text once and compare with
   sentence-transformers fp32 (the reference, built first): min cosine over all texts, and nearest-neighbour
   agreement (for each text, its nearest other text under this runtime is the one sentence-transformers
   finds: the share of texts for which it is). A runtime whose package is missing is skipped, one that raises
   is recorded with its error, one whose min cosine is under ``--min-cos-to-time`` is not timed; none stops
   the run.
3. Timing: ``--rounds`` rounds, each runtime encoding all texts once per round (tokenization included), the
   order rotating each round, so drifting machine load falls on all alike. Median texts/s. Each runtime lives
   in a process of its own (``Isolated``; ``--in-process`` for one process): in one process their thread
   pools slowed each other (fastbert bf16 261 texts/s beside ONNX Runtime, CTranslate2 and fastembed, 394
   alone; sentence-transformers 80 vs 101).
4. A table (printed) and ``cpu_peers_<cpu>_<date>.json`` / ``.md`` in ``--out`` with the CPU model and its
   AMX / AVX512-BF16 / VNNI flags, thread counts, every runtime's version and the git commit.

    python -m fastbert.benchmarks.bench_encode --peers
    python -m fastbert.benchmarks.bench_encode --peers --texts 300 --rounds 2 --runtimes onnx,fastbert
"""
import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fastbert.benchmarks.common import REPO_ROOT, _corpus_paragraphs, environment
from fastbert.benchmarks.cpu_peers import Runtime, Setup, hf_tokenizer, runtimes
from fastbert.hardware import physical_cores

DEFAULT_OUT = (Path(__file__).resolve().parent / "results" if (REPO_ROOT / ".git").exists()
               else Path.cwd() / "fastbert-bench-results")
CPU_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx512_fp16")
VERSIONS = ("torch", "numpy", "transformers", "tokenizers", "sentence-transformers", "onnx", "onnxscript",
            "onnxruntime", "openvino", "ctranslate2", "fastembed", "fastbert")


# ------------------------------------------------------------------------------------------------------
# Corpus
# ------------------------------------------------------------------------------------------------------
FORTUNE_LANGS = ("de", "es", "it")
NOT_TEXT = {"asciiart", "ascii-art", "banner", "off"}  # cookie files that are pictures, not prose
# Paragraphs per English document: mostly one, sometimes a run of several (the runs of 5 and 8 paragraphs
# are what gives documents past 256 tokens, truncated as in real use).
DOC_PARAGRAPHS = (1, 1, 1, 1, 1, 2, 2, 3, 5, 8)


def fortunes_dir() -> Path:
    """Where scripts/get_text_data.sh unpacks Debian's fortune packages (``FASTBERT_DATA`` or ``data/``)."""
    return Path(os.environ.get("FASTBERT_DATA", REPO_ROOT / "data")) / "debian/root/usr/share/games/fortunes"


def _cookies(lang_dir: Path) -> List[str]:
    """The cookies of one language's fortune files (``%``-separated), whitespace collapsed, sorted, unique."""
    out = set()
    for path in sorted(lang_dir.iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.name in NOT_TEXT:
            continue
        for cookie in re.split(r"\n%\n", path.read_text(encoding="utf-8", errors="replace")):
            cookie = " ".join(cookie.split())
            if len(cookie) >= 20:
                out.add(cookie)
    return sorted(out)


def peer_corpus(n_texts: int = 1200, seed: int = 0, doc_root: Path = Path("/usr/share/doc"),
                fortunes: Optional[Path] = None) -> Tuple[List[str], str]:
    """``n_texts`` unique real documents in a fixed order for a given machine, and one line describing them.

    A sixth each of German, Spanish and Italian fortune cookies (drawn with ``seed``) when ``fortunes`` (default
    ``fortunes_dir()``) has them, the rest English documents: runs of ``DOC_PARAGRAPHS`` consecutive paragraphs
    of the plain-text files under ``doc_root`` (``common._corpus_paragraphs``)."""
    rng = random.Random(seed)
    fortunes = fortunes_dir() if fortunes is None else fortunes
    per_lang = {lang: _cookies(fortunes / lang) for lang in FORTUNE_LANGS if (fortunes / lang).is_dir()}
    n_each = n_texts // 6 if per_lang else 0
    foreign, counts = [], {}
    for lang, cookies in per_lang.items():
        picked = rng.sample(cookies, min(n_each, len(cookies)))
        foreign += picked
        counts[lang] = len(picked)
    n_docs = n_texts - len(foreign)
    paragraphs = list(dict.fromkeys(_corpus_paragraphs(Path(doc_root), max_files=5000,
                                                       max_paragraphs=n_docs * max(DOC_PARAGRAPHS))))
    docs, i = [], 0
    while len(docs) < n_docs and i < len(paragraphs):
        k = rng.choice(DOC_PARAGRAPHS)
        docs.append("\n\n".join(paragraphs[i:i + k]))
        i += k
    if len(docs) < n_docs:
        raise ValueError(f"{doc_root} holds text for {len(docs)} documents, {n_docs} were asked for")
    texts = list(dict.fromkeys(docs + foreign))
    rng.shuffle(texts)
    langs = ", ".join(f"{n} {lang}" for lang, n in counts.items())
    where = (f"fortune cookies ({langs}) from Debian's fortunes-de/-es/-it under {fortunes}" if per_lang else
             f"no German/Spanish/Italian fortune cookies ({fortunes} is absent: run scripts/get_text_data.sh)")
    return texts, (f"{len(texts)} documents: {len(docs)} English, runs of 1-{max(DOC_PARAGRAPHS)} consecutive "
                   f"paragraphs of the plain-text files under {doc_root}; {where}; seed {seed}")


def token_lengths(setup: Setup, texts: Sequence[str]) -> Dict:
    """Token counts ([CLS]/[SEP] included) before truncation, and how many texts ``max_seq_length`` cuts."""
    tok = hf_tokenizer(setup)
    tok.no_truncation()
    tok.no_padding()
    n = sorted(len(e.ids) for e in tok.encode_batch(list(texts)))
    return {"mean": round(statistics.fmean(n), 1), "median": n[len(n) // 2], "p90": n[int(0.9 * (len(n) - 1))],
            "max": n[-1], "truncated": sum(x > setup.max_seq_length for x in n)}


# ------------------------------------------------------------------------------------------------------
# Fidelity
# ------------------------------------------------------------------------------------------------------
def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """For each row, the index of its most cosine-similar other row."""
    e = emb.astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(1)


def fidelity(emb: np.ndarray, ref: np.ndarray, ref_nn: Optional[np.ndarray] = None) -> Dict:
    """Agreement of ``emb`` with the reference embeddings ``ref`` (same texts, same order): per-text cosine
    (min, mean, the worst text's index) and nearest-neighbour agreement (share of texts whose nearest other
    text is the reference's)."""
    emb = np.asarray(emb)
    if emb.shape != ref.shape:
        raise ValueError(f"embeddings of shape {emb.shape}, the reference's are {ref.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings hold NaN or inf")
    a = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    b = ref.astype(np.float64) / np.linalg.norm(ref.astype(np.float64), axis=1, keepdims=True)
    cos = (a * b).sum(1)
    ref_nn = nearest_neighbours(ref) if ref_nn is None else ref_nn
    return {"min_cos": float(cos.min()), "mean_cos": float(cos.mean()), "worst_text": int(cos.argmin()),
            "nn_agreement": float((nearest_neighbours(emb) == ref_nn).mean())}


# ------------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------------
def _error(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:400]


# ------------------------------------------------------------------------------------------------------
# One process per runtime
# ------------------------------------------------------------------------------------------------------
def _runtime_worker(index: int, setup: Setup, conn) -> None:
    """A worker process: builds ``runtimes()[index]``, then encodes every list of texts it is sent."""
    torch.set_num_threads(setup.threads)
    try:
        encode, info = runtimes()[index].build(setup)
    except Exception as e:  # noqa: BLE001 - reported to the parent as the row's error
        conn.send(("error", _error(e)))
        return
    conn.send(("ready", info))
    while True:
        texts = conn.recv()
        if texts is None:
            return
        try:
            conn.send(("ok", np.asarray(encode(texts), dtype=np.float32)))
        except Exception as e:  # noqa: BLE001
            conn.send(("error", _error(e)))


_LIVE = []  # every Isolated started, closed at the end of run()


class Isolated:
    """A runtime of ``runtimes()`` built and run in a process of its own, as its users run it: its thread
    pools (ONNX Runtime's spinning workers, CTranslate2's OpenMP, OpenVINO's TBB, torch's OpenMP) never share a
    process with another runtime's. Between its passes the process waits on a pipe and uses no CPU. Calling it
    sends the texts and returns the embeddings (the pipe moves ~2 MB per pass: milliseconds of a seconds-long
    pass, the same for every runtime)."""

    def __init__(self, index: int, setup: Setup):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        _LIVE.append(self)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_runtime_worker, args=(index, setup, child), daemon=True)
        self.process.start()
        child.close()
        self.info = self._reply()

    def _reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the runtime's process died (exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(value)
        return value

    def __call__(self, texts):
        self.conn.send(list(texts))
        return self._reply()

    def close(self):
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def build_isolated(index: int):
    def build(setup: Setup):
        runtime = Isolated(index, setup)
        return runtime, dict(runtime.info)
    return build


def check_runtimes(rts: Sequence[Runtime], setup: Setup, texts: List[str], min_cos_to_time: float = 0.5,
                   log=print) -> Tuple[List[Dict], Dict]:
    """Build each runtime, warm it up and check it against the reference (the first runtime, which must be
    the one marked ``reference``). Returns one row per runtime and ``{row index: encode}`` for those to time.
    A runtime that is missing, raises or fails the check gets ``status`` and ``note``; the reference failing
    raises (nothing can be checked without it)."""
    if not rts or not rts[0].reference:
        raise ValueError("the first runtime must be the reference (sentence-transformers fp32)")
    rows, to_time, ref, ref_nn = [], {}, None, None
    for i, rt in enumerate(rts):
        row = {"runtime": rt.name, "precision": rt.precision, "requested": rt.precision, "status": "ok"}
        rows.append(row)
        missing = [m for m in rt.needs if importlib.util.find_spec(m) is None]
        if missing:
            row.update(status="skipped",
                       note=f"not installed: {', '.join(missing)} (pip install 'fastbert[bench-cpu]')")
            log(f"  {rt.name} {rt.precision}: {row['note']}")
            continue
        try:
            t0 = time.perf_counter()
            encode, info = rt.build(setup)
            row["load_s"] = round(time.perf_counter() - t0, 2)
            row.update(info)
            encode(texts[:setup.batch_size])  # warm-up
            t0 = time.perf_counter()
            emb = np.asarray(encode(texts))
            row["check_pass_s"] = round(time.perf_counter() - t0, 2)
            if rt.reference:
                ref, ref_nn = emb, nearest_neighbours(emb)
            row.update(fidelity(emb, ref, ref_nn))
        except Exception as e:  # noqa: BLE001 - a runtime that breaks is a result, not the end of the run
            if rt.reference:
                raise RuntimeError(f"the reference ({rt.name}) failed: {_error(e)}") from e
            row.update(status="error", note=_error(e))
            log(f"  {rt.name} {rt.precision}: {row['note']}")
            continue
        if not row["min_cos"] >= min_cos_to_time:
            row.update(status="failed check", note=f"min cos {row['min_cos']:.4f} < {min_cos_to_time}: not timed")
        else:
            to_time[i] = encode
        log(f"  {rt.name} [{row['precision']}]: loaded in {row['load_s']} s, min cos {row['min_cos']:.6f}, "
            f"NN agreement {100 * row['nn_agreement']:.1f}%")
    return rows, to_time


def time_round_robin(encoders: Dict[int, callable], texts: List[str], rounds: int, log=print,
                     after_round=None) -> Tuple[Dict, Dict]:
    """Seconds per full pass over ``texts``, ``rounds`` times, one pass of each encoder per round, the order
    rotating. An encoder that raises is dropped (its error returned), the others go on. ``after_round(seconds,
    errors)`` is called after each round."""
    seconds = {k: [] for k in encoders}
    errors = {}
    for r in range(rounds):
        live = [k for k in encoders if k not in errors]
        if not live:
            break
        order = live[r % len(live):] + live[:r % len(live)]
        for k in order:
            t0 = time.perf_counter()
            try:
                encoders[k](texts)
            except Exception as e:  # noqa: BLE001
                errors[k] = _error(e)
                continue
            seconds[k].append(time.perf_counter() - t0)
        log(f"  round {r + 1}/{rounds} done (load avg {os.getloadavg()[0]:.2f})")
        if after_round is not None:
            after_round(seconds, errors)
    return seconds, errors


def _fill_times(rows: List[Dict], texts: List[str], seconds: Dict, errors: Dict) -> None:
    for k, s in seconds.items():
        if k in errors:
            rows[k].update(status="error", note=f"while timed: {errors[k]}")
        if s:
            rows[k].update(seconds=[round(x, 4) for x in s], texts_per_s=len(texts) / statistics.median(s))
    ref = rows[0].get("texts_per_s")
    for row in rows:
        if ref and "texts_per_s" in row:
            row["x_st"] = row["texts_per_s"] / ref


def run(texts: List[str], corpus: str, setup: Setup, rounds: int = 3, rts: Optional[Sequence[Runtime]] = None,
        min_cos_to_time: float = 0.5, log=print, save_partial=None, isolate: bool = False) -> Dict:
    """The whole benchmark on ``texts``; returns the results record (rows in ``runtimes()`` order).
    ``save_partial(record)`` gets the record (``"partial": true``) after the checks and after every round.
    ``isolate``: each runtime in a process of its own (``Isolated``; ``rts`` must then be ``runtimes()``'s)."""
    if isolate:
        if rts is not None:
            chosen = {(rt.name, rt.precision) for rt in rts}
            all_rts = runtimes()
            rts = [Runtime(rt.name, rt.precision, build_isolated(i), rt.needs, rt.reference)
                   for i, rt in enumerate(all_rts) if (rt.name, rt.precision) in chosen]
        else:
            rts = [Runtime(rt.name, rt.precision, build_isolated(i), rt.needs, rt.reference)
                   for i, rt in enumerate(runtimes())]
    rts = list(runtimes() if rts is None else rts)
    torch.set_num_threads(setup.threads)
    res = {"benchmark": "cpu_peers", "partial": True, "corpus": corpus, "texts": len(texts),
           "token_lengths": token_lengths(setup, texts), "batch_size": setup.batch_size,
           "max_seq_length": setup.max_seq_length, "threads": setup.threads, "rounds": rounds,
           "min_cos_to_time": min_cos_to_time, "rows": [], "environment": cpu_environment()}
    log(f"{len(texts)} texts, {setup.threads} threads; building and checking {len(rts)} runtimes")
    res["rows"], to_time = check_runtimes(rts, setup, texts, min_cos_to_time, log)

    def progress(seconds, errors):
        _fill_times(res["rows"], texts, seconds, errors)
        res["load_avg_end"] = os.getloadavg()
        if save_partial is not None:
            save_partial(res)

    progress({}, {})
    log(f"timing {len(to_time)} runtimes, {rounds} rounds of {len(texts)} texts each")
    try:
        seconds, errors = time_round_robin(to_time, texts, rounds, log, after_round=progress)
    finally:
        while _LIVE:
            _LIVE.pop().close()
    _fill_times(res["rows"], texts, seconds, errors)
    res.update(partial=False, load_avg_end=os.getloadavg(), isolated=isolate)
    return res


# ------------------------------------------------------------------------------------------------------
# Environment: CPU model and flags, cores, versions
# ------------------------------------------------------------------------------------------------------
def lscpu() -> Dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {"model_name": fields.get("Model name", "").strip() or None,
            "flags": {f: f in flags for f in CPU_FLAGS} if flags else None}


def versions() -> Dict[str, Optional[str]]:
    out = {}
    for dist in VERSIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def cpu_environment() -> Dict:
    env = environment(torch.device("cpu"))
    env.update(lscpu=lscpu(), physical_cores=physical_cores(), versions=versions())
    return env


# ------------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------------
def table(res: Dict) -> str:
    """The markdown table, fastest first; rows that were not timed last, with their reason."""
    timed = sorted((r for r in res["rows"] if "texts_per_s" in r), key=lambda r: -r["texts_per_s"])
    rest = [r for r in res["rows"] if "texts_per_s" not in r]
    lines = ["| runtime | precision | texts/s | x ST | min cos | NN agreement | passes (s) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in timed + rest:
        tps = f"{r['texts_per_s']:.1f}" if "texts_per_s" in r else "-"
        x = f"{r['x_st']:.2f}x" if "x_st" in r else "-"
        cos = f"{r['min_cos']:.5f}" if "min_cos" in r else "-"
        nn = f"{100 * r['nn_agreement']:.1f}%" if "nn_agreement" in r else "-"
        note = r.get("note", "")
        if r["status"] == "ok" and r["min_cos"] < 0.9995:
            note = "below min cos 0.9995"
        passes = " / ".join(f"{t:.1f}" for t in r.get("seconds", [])) or "-"
        lines.append(f"| {r['runtime']} | {r['precision']} | {tps} | {x} | {cos} | {nn} | {passes} | {note} |")
    return "\n".join(lines)


def markdown(res: Dict) -> str:
    env = res["environment"]
    cpu = env["lscpu"]
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in (cpu["flags"] or {}).items()) or "unknown"
    vers = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    tl = res["token_lengths"]
    ov = [r for r in res["rows"] if r["runtime"] == "OpenVINO" and "INFERENCE_PRECISION_HINT" in r]
    rounds_done = max((len(r.get("seconds", [])) for r in res["rows"]), default=0)
    return "\n".join([
        f"# fastbert vs CPU runtimes: all-MiniLM-L6-v2 sentence embeddings ({env['date_utc']})", "",
        f"CPU: {cpu['model_name']}, {env['physical_cores']} physical cores usable; flags: {flags}.",
        f"Threads: {res['threads']} for every runtime (torch {env['torch_threads']}; ONNX Runtime / OpenVINO / "
        "CTranslate2 / fastembed intra-op set to the same, inter-op 1). "
        f"Load average at the start {env['load_avg_1m']}, at the end {res['load_avg_end'][0]:.2f}"
        + (": **a machine shared with other jobs: the numbers are noisy and approximate.**"
           if max(float(env['load_avg_1m']), res['load_avg_end'][0]) > res['threads'] + 0.5 else
           " (no other job competed for the cores)."), "",
        *([f"**Partial results**: the run stopped after {rounds_done} of {res['rounds']} timed rounds.", ""]
          if res.get("partial") else []),
        f"Corpus: {res['corpus']}. Tokens per text (uncut): mean {tl['mean']}, median {tl['median']}, "
        f"p90 {tl['p90']}, max {tl['max']}; {tl['truncated']} texts cut at {res['max_seq_length']}.", "",
        f"Every runtime: max_seq_length {res['max_seq_length']}, mean pooling + L2 normalisation, batch "
        f"{res['batch_size']}. texts/s: {res['texts']} texts / median of {res['rounds']} passes, tokenization "
        "included, runtimes interleaved round-robin"
        + (", each in a process of its own" if res.get("isolated") else ", all in one process") +
        ". min cos: lowest cosine to sentence-transformers fp32 over "
        "all texts; NN agreement: share of texts whose nearest other text is sentence-transformers'. passes: "
        "seconds of each timed pass over all texts, in round order (their spread shows the machine's noise).",
        *(["OpenVINO's INFERENCE_PRECISION_HINT: " + ", ".join(
            f"{r['requested']} -> {r['INFERENCE_PRECISION_HINT']}" for r in ov) + "."] if ov else []), "",
        table(res), "",
        f"Versions: {vers}. Commit {env['git_commit']}{' (dirty tree)' if env['git_dirty'] else ''}.", ""])


def results_stem(out: Path, threads: int, tag: Optional[str] = None) -> Path:
    env = cpu_environment()
    slug = re.sub(r"[^a-z0-9]+", "-", (env["lscpu"]["model_name"] or env["cpu_model"]).lower()).strip("-")[:32]
    date = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    return out / "_".join(x for x in ("cpu_peers", slug, f"{threads}t", tag, date) if x)


def save(res: Dict, stem: Path) -> None:
    """``stem``.json and .md, each written whole (a temporary file renamed over it)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(res, indent=2, default=str) + "\n"), (".md", markdown(res))):
        tmp = stem.with_suffix(suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(stem.with_suffix(suffix))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastbert.benchmarks.bench_encode --peers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=1200, help="corpus size (default 1200)")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes over all texts per runtime (default 3)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: physical cores)")
    ap.add_argument("--runtimes", default=None,
                    help="comma list: only rows whose 'runtime precision' contains one of these (case-insensitive); "
                         "sentence-transformers always runs (the reference)")
    ap.add_argument("--min-cos-to-time", type=float, default=0.5, help="runtimes below this min cosine are not timed")
    ap.add_argument("--seed", type=int, default=0, help="corpus sampling seed")
    ap.add_argument("--work-dir", default=None, help="keep the exports here (default: a temporary directory)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--tag", default=None)
    ap.add_argument("--in-process", action="store_true",
                    help="build every runtime in this one process (default: each in a process of its own, as users "
                         "run them; in one process their thread pools slow each other down)")
    args = ap.parse_args(argv)

    from fastbert.assets import MISSING_MODEL_HELP, default_model_dir

    model_dir = default_model_dir()
    if model_dir is None:
        raise SystemExit(MISSING_MODEL_HELP)
    rts = runtimes()
    if args.runtimes:
        want = [w.strip().lower() for w in args.runtimes.split(",") if w.strip()]
        rts = [r for r in rts if r.reference or any(w in f"{r.name} {r.precision}".lower() for w in want)]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="fastbert-peers-"))
    threads = args.threads or physical_cores()
    stem = results_stem(Path(args.out), threads, args.tag)
    try:
        setup = Setup(Path(model_dir), work, threads, args.batch_size, args.max_seq_length)
        texts, corpus = peer_corpus(args.texts, args.seed)
        print(corpus)
        res = run(texts, corpus, setup, args.rounds, rts, args.min_cos_to_time,
                  save_partial=lambda r: save(r, stem), isolate=not args.in_process)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    save(res, stem)
    print(table(res))
    print(f"wrote {stem}.json and {stem}.md")
    return res


if __name__ == "__main__":
    main()
