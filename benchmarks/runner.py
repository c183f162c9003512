"""The benchmark runner: each step of the plan (plan.py) built provider by provider, checked against Hugging
Face eager fp32, timed (timer.py) into report.Rows; the per-op benchmarks and the tokenizer; the results
flushed to disk after every section and written through report.write_report at the end."""
import gc
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from fastbert.benchmarks import common
from fastbert.benchmarks.common import environment, hardware_line
from fastbert.benchmarks.plan import BASELINES, DTYPES, EFFORT, Effort, Step, Workload, plan_for
from fastbert.benchmarks.report import (Row, evaluate_targets, jsonable, print_summary, results_stem, write_json,
                                       write_report)
from fastbert.benchmarks.timer import Timing, time_calls, time_op, time_round_robin

Log = Callable[[str], None]
P_TRITON_NOTE = ("Triton providers are skipped on CPU: Triton kernels need a GPU (the CPU interpreter is no speed "
                 "measurement).")


@dataclass
class Options:
    """What the command line asks of a run (``fastbert bench --help``)."""
    providers: List[str]
    out: Path
    quick: bool = False
    models: Optional[str] = None  # comma-separated subset of the plan's models, or "tiny"
    reps: Optional[int] = None  # timed calls per measurement (default: the plan's effort)
    compile_models: List[str] = field(default_factory=lambda: ["bert-base"])
    compile_cpu: bool = False
    interleave: bool = True  # CPU: providers timed round-robin
    plots: bool = True
    readme: Optional[Path] = None  # README whose bench section is rewritten
    tag: Optional[str] = None
    triton_interpret: bool = False


@dataclass
class Section:
    """One step of the plan being measured: its inputs, Hugging Face eager fp32's outputs on them, and how hard
    each provider is timed."""
    step: Step
    device: torch.device
    opts: Options
    log: Log
    data: Dict[str, List[Dict]]  # workload name -> input sets
    amp: Optional[torch.dtype]  # autocast dtype of a training step (GPU, low precision), else None
    refs: Dict[str, object] = field(default_factory=dict)  # workload name -> reference output (training: loss, grads)
    base_err: Dict[str, object] = field(default_factory=dict)  # workload name -> HF eager's own error in this dtype
    weights: str = ""

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.step.dtype]

    @property
    def training(self) -> bool:
        return self.step.section in ("training", "pretraining")

    @property
    def effort(self) -> Effort:
        return EFFORT[(self.device.type, self.opts.quick)]

    def row(self, w: Workload, provider: str, **fields) -> Row:
        inputs = self.data[w.name]
        real = sum(sum(x["lengths"]) for x in inputs) / len(inputs)
        padded = sum(x["input_ids"].numel() for x in inputs) / len(inputs)
        return Row(self.step.section, self.step.model, self.step.dtype, w.name, w.kind, w.batch, w.seqlen, real,
                   padded, round(1 - real / padded, 4), provider, weights=self.weights, **fields)


# ------------------------------------------------------------------------------------------------------
# Encoder sections: inference, training, pre-training
# ------------------------------------------------------------------------------------------------------
def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_encoder_section(step: Step, device: torch.device, opts: Options, log: Log) -> List[Row]:
    from fastbert.benchmarks import providers as P

    ref = P.reference_model(step.model, seed=0)
    n_sets = EFFORT[(device.type, opts.quick)].input_sets
    data = {w.name: [P.make_inputs(w.lengths(k), ref.config.vocab_size, device, seed=17 * k + 1)
                     for k in range(n_sets)] for w in step.workloads}
    amp = None if (DTYPES[step.dtype] == torch.float32 or device.type != "cuda") else DTYPES[step.dtype]
    sec = Section(step, device, opts, log, data, amp)
    if step.section == "pretraining":
        return _run_pretraining(sec, ref)
    sec.weights = ref.weights_note

    # The reference: Hugging Face eager in fp32 on this device; the baseline error: the same in `dtype`.
    t0 = time.perf_counter()
    hf32 = P.build_hf(ref, "eager").to(device).eval()
    first = {w.name: data[w.name][0] for w in step.workloads}
    if sec.training:
        for name, x in first.items():
            sec.refs[name] = _to_cpu(_train_check_values(hf32, x, device, None))
            sec.base_err[name] = (_train_errors(_to_cpu(_train_check_values(hf32, x, device, amp)), sec.refs[name])
                                  if amp else {"loss": 0.0, "grad": 0.0})
    else:
        def hidden(x):
            return hf32(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state.cpu()

        with torch.no_grad():  # kept on the host, so the references do not count in the providers' peak memory
            sec.refs = {name: hidden(x) for name, x in first.items()}
            hf32.to(sec.dtype)  # in place: HF eager in the timed dtype, whose error sets the tolerance
            sec.base_err = {name: 0.0 if sec.dtype == torch.float32 else
                            P.valid_max_abs_err(hidden(x), sec.refs[name], x["attention_mask"].cpu())
                            for name, x in first.items()}
    del hf32
    _free(device)
    log(f"  reference (HF eager fp32) ready in {time.perf_counter() - t0:.1f}s; weights: {ref.weights_note}")

    def build(name):
        if sec.training:
            return P.build_training(name, ref, device, amp, compile_cpu=opts.compile_cpu)
        return P.build_inference(name, ref, device, sec.dtype, compile_cpu=opts.compile_cpu)

    return _run_providers(sec, build)


def _run_pretraining(sec: Section, encoder) -> List[Row]:
    """The pre-training step with the MLM head (benchmarks/pretraining.py): checked against HF eager fp32's
    loss and gradients, then timed provider by provider (round-robin on CPU)."""
    from fastbert.benchmarks import pretraining as PT

    ref = PT.reference_model(encoder, seed=0)
    sec.weights = ref.weights_note
    vocab = ref.config.vocab_size
    sec.data = {name: [PT.add_fields(x, vocab, seed=31 * k + 7) for k, x in enumerate(xs)]
                for name, xs in sec.data.items()}
    t0 = time.perf_counter()
    hf32 = PT.build("hf-eager", ref, sec.device, None)
    sec.refs = {name: _to_cpu(hf32.loss_and_grads(xs[0])) for name, xs in sec.data.items()}
    del hf32
    sec.base_err = {name: {"loss": 0.0, "grad": 0.0} for name in sec.data}
    if sec.amp is not None:
        hf_amp = PT.build("hf-eager", ref, sec.device, sec.amp)
        sec.base_err = {name: _train_errors(_to_cpu(hf_amp.loss_and_grads(xs[0])), sec.refs[name])
                        for name, xs in sec.data.items()}
        del hf_amp
    _free(sec.device)
    sec.log(f"  reference (HF eager fp32, BertForPreTraining) ready in {time.perf_counter() - t0:.1f}s")
    return _run_providers(sec, lambda name: PT.build(name, ref, sec.device, sec.amp,
                                                     compile_cpu=sec.opts.compile_cpu))


def _run_providers(sec: Section, build: Callable) -> List[Row]:
    """Build each provider (``build(name)``: a Built, or raises Skip), check it against the reference, time it
    (round-robin on CPU); one row per provider and workload, a broken provider reported, never fatal."""
    from fastbert.benchmarks import providers as P

    opts, log, workloads = sec.opts, sec.log, sec.step.workloads
    rows: List[Row] = []
    interleave = sec.device.type == "cpu" and opts.interleave  # all providers built, timed round-robin
    ready: Dict[str, object] = {}
    for name in opts.providers:
        if name not in P.PROVIDERS:
            raise SystemExit(f"unknown provider {name!r}; choose from {', '.join(P.PROVIDERS)}")
        t0 = time.perf_counter()
        if name == "hf-compile" and sec.device.type == "cuda" and sec.step.model not in opts.compile_models:
            rows += [sec.row(w, name, status="skipped",
                             reason=f"torch.compile measured on {','.join(opts.compile_models)} only (compile time; "
                                    "--compile-models to add)") for w in workloads]
            log(f"  {name:24s} skipped: not in --compile-models")
            continue
        try:
            built = build(name)
        except P.Skip as e:
            rows += [sec.row(w, name, status="skipped", reason=str(e)) for w in workloads]
            log(f"  {name:24s} skipped: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - one broken provider must not end the run
            traceback.print_exc(file=sys.stderr)
            rows += [sec.row(w, name, status="error", reason=f"build: {type(e).__name__}: {e}") for w in workloads]
            log(f"  {name:24s} error while building: {type(e).__name__}: {e}")
            continue
        if interleave:
            ready[name] = built
            continue
        for w in workloads:
            rows.append(_measure(sec, w, built))
            _log_row(log, rows[-1])
        del built
        _free(sec.device)
        log(f"  {name:24s} done in {time.perf_counter() - t0:.1f}s")
    if ready:
        for w in workloads:
            rows += _measure_interleaved(sec, w, ready)
        ready.clear()
        _free(sec.device)
    _add_speedups(rows)
    return rows


def _log_row(log: Log, r: Row):
    if r.ok:
        host = f"  host {r.host_ms:.3f} ms" if r.host_ms is not None else ""
        log(f"  {r.provider:24s} {r.workload:24s} median {r.median_ms:9.3f} ms  p90 {r.p90_ms:9.3f} ms  "
            f"{r.tokens_per_s:12,.0f} tok/s  err {r.check}{host}")
    else:
        log(f"  {r.provider:24s} {r.workload:24s} {r.status}: {r.reason}")


def _train_check_values(model, x, device, amp):
    """Loss and checked gradients of ``model`` (eval mode: no dropout), fp32 or under autocast."""
    from fastbert.benchmarks import providers as P

    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        hidden = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
    loss = P.masked_probe_loss(hidden, x["attention_mask"])
    loss.backward()
    grads = {k: p.grad.detach().float().clone() for k, p in model.named_parameters() if k in P.CHECKED_GRADS}
    model.zero_grad(set_to_none=True)
    return loss.detach().float(), grads


def _to_cpu(values):
    loss, grads = values
    return loss.cpu(), {k: g.cpu() for k, g in grads.items()}


def _train_errors(values, ref):
    loss, grads = values
    ref_loss, ref_grads = ref
    loss_err = float((loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-12))
    grad_err = max(float((grads[k] - ref_grads[k]).norm() / ref_grads[k].norm().clamp_min(1e-12))
                   for k in ref_grads)
    return {"loss": loss_err, "grad": grad_err}


def _grad_mode(training):
    return torch.enable_grad() if training else torch.no_grad()


def _failed_check(sec: Section, w: Workload, name: str, check: Dict, check_str: str) -> Row:
    return sec.row(w, name, status="failed check", check_detail=check, check=check_str,
                   reason=f"outputs differ from HF eager fp32 beyond tolerance: {check}")


def _measure(sec: Section, w: Workload, built) -> Row:
    """Check one provider on one workload, then time it alone (GPU, or --no-interleave)."""
    from fastbert.benchmarks import providers as P

    inputs, effort = sec.data[w.name], sec.effort
    try:
        ok, check, check_str = _check(sec, w, built)  # before anything is timed
        if not ok:
            return _failed_check(sec, w, built.name, check, check_str)
        common.reset_peak_memory(sec.device)
        with _grad_mode(sec.training):
            timing = time_calls(built.fn, sec.device, inputs, warmup=effort.warmup, reps=sec.opts.reps or effort.reps,
                                min_s=effort.min_s, max_s=effort.max_s, host=True)
        peak = common.peak_memory_mb(sec.device)
    except P.Skip as e:
        return sec.row(w, built.name, status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: reported, the run goes on
        traceback.print_exc(file=sys.stderr)
        _free(sec.device)
        return sec.row(w, built.name, status="error", reason=f"{type(e).__name__}: {str(e)[:300]}")
    return _ok_row(sec, w, built, timing, peak, check, check_str)


def _measure_interleaved(sec: Section, w: Workload, ready: Dict[str, object]) -> List[Row]:
    """CPU: check every provider, then time them round-robin, one call each per round, so that the load of a
    shared machine, which drifts over seconds, falls on all of them alike. Peak RSS: one more call each."""
    inputs, effort = sec.data[w.name], sec.effort
    rows, passing, checks = [], {}, {}
    for name, built in ready.items():
        try:
            ok, check, check_str = _check(sec, w, built)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            rows.append(sec.row(w, name, status="error", reason=f"{type(e).__name__}: {str(e)[:300]}"))
            continue
        if ok:
            passing[name], checks[name] = built, (check, check_str)
        else:
            rows.append(_failed_check(sec, w, name, check, check_str))
    if not passing:
        return rows
    with _grad_mode(sec.training):
        timings = time_round_robin({n: b.fn for n, b in passing.items()}, sec.device, inputs, warmup=effort.warmup,
                                   reps=sec.opts.reps or effort.reps, max_s=effort.max_s)
        for name, built in passing.items():
            common.reset_peak_memory(sec.device)
            built.fn(inputs[0])
            peak = common.peak_memory_mb(sec.device)
            rows.append(_ok_row(sec, w, built, timings[name], peak, *checks[name]))
            _log_row(sec.log, rows[-1])
    return rows


def _ok_row(sec: Section, w: Workload, built, timing: Timing, peak, check, check_str) -> Row:
    row = sec.row(w, built.name)
    times_ms, every = timing.kept()
    row.median_ms, row.p90_ms, row.min_ms, row.n_calls = timing.median_ms, timing.p90_ms, timing.min_ms, timing.n
    row.tokens_per_s = row.real_tokens / (timing.median_ms / 1e3)
    row.peak_mem_mb, row.memory_kind = peak, common.memory_kind(sec.device)
    row.check, row.check_detail, row.notes = check_str, check, built.notes
    row.times_ms, row.times_kept_every, row.host_ms = times_ms, every, timing.host_ms
    return row


def _check(sec: Section, w: Workload, built):
    """Is the provider's output (training: loss and gradients) close to Hugging Face eager fp32's?"""
    from fastbert.benchmarks import providers as P

    x, ref, base_err = sec.data[w.name][0], sec.refs[w.name], sec.base_err[w.name]
    if sec.training:
        errs = _train_errors(_to_cpu(built.loss_and_grads(x)), ref)
        floor = 1e-4 if sec.amp is None else 2e-2
        ok = all(errs[k] <= 3 * base_err[k] + floor for k in errs)
        check = {"loss_rel_err": errs["loss"], "grad_rel_err": errs["grad"],
                 "hf_eager_same_dtype": base_err, "tolerance": f"3x HF eager + {floor}"}
        return ok, check, f"loss {errs['loss']:.1e} grad {errs['grad']:.1e}"
    with torch.no_grad():
        out = built.fn(x)
    err = P.valid_max_abs_err(out.cpu(), ref, x["attention_mask"].cpu())
    tol = P.tolerance(sec.dtype, base_err)
    return err <= tol, {"max_abs_err": err, "hf_eager_same_dtype": base_err, "tolerance": tol}, f"{err:.1e}"


def _add_speedups(rows: List[Row]):
    """Each row's speed-up over each Hugging Face baseline on the same workload (None where either failed)."""
    groups: Dict[tuple, Dict[str, Row]] = {}
    for r in rows:
        groups.setdefault((r.section, r.model, r.dtype, r.workload), {})[r.provider] = r
    for by_provider in groups.values():
        for r in by_provider.values():
            for base in BASELINES:
                b = by_provider.get(base)
                r.speedups[base] = b.median_ms / r.median_ms if r.ok and b is not None and b.ok else None


# ------------------------------------------------------------------------------------------------------
# Sections that live in other modules: per-op benchmarks and the tokenizer
# ------------------------------------------------------------------------------------------------------
def copy_bandwidth(device) -> Optional[Dict]:
    """Measured device-to-device copy bandwidth (1 GiB, far past L2), bytes read + written per second: the
    ceiling the memory-bound ops (LayerNorm, GELU) are reported against."""
    if device.type != "cuda":
        return None
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_op(lambda: dst.copy_(src), device).median_ms
    del src, dst
    _free(device)
    return {"bytes": 2**30, "median_ms": ms, "GB/s": 2 * 2**30 / (ms * 1e-3) / 1e9}


def run_ops(device, log: Log, out: Optional[Dict] = None, flush=lambda: None) -> Dict:
    """Each per-op benchmark into ``out`` (filled as it goes; ``flush`` after each op)."""
    import importlib

    out = {} if out is None else out
    copy = copy_bandwidth(device)
    if copy:
        out["copy_bandwidth"] = {"status": "ok", "rows": [copy]}
        log(f"  device-to-device copy: {copy['GB/s']:.0f} GB/s (read + write)")
    for op in ("layer_norm", "gelu", "attention", "lm_head_ce"):
        mod_name = f"fastbert.benchmarks.bench_{op}"
        try:
            fn = importlib.import_module(mod_name).run
        except Exception as e:  # noqa: BLE001 - absent or broken: reported, not fatal
            out[op] = {"status": "not available", "reason": f"{mod_name}.run: {type(e).__name__}: {e}"}
            log(f"  {op}: not available ({type(e).__name__}: {e})")
            continue
        t0 = time.perf_counter()
        try:
            rows = fn(device)
            for r in rows if copy else []:
                if r.get("GB/s") is not None:
                    r["pct_of_copy_bw"] = round(100 * r["GB/s"] / copy["GB/s"], 1)
            out[op] = {"status": "ok", "rows": jsonable(rows), "seconds": round(time.perf_counter() - t0, 1)}
            log(f"  {op}: {len(rows)} rows in {time.perf_counter() - t0:.1f}s")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            out[op] = {"status": "error", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
            log(f"  {op}: error ({type(e).__name__}: {e})")
        flush()
    return out


def tokenizer_texts(max_paragraphs=20000) -> List[str]:
    """Real text for the tokenizer: paragraphs of the Debian documentation on this machine."""
    try:
        return common._corpus_paragraphs(Path("/usr/share/doc"), max_files=2000, max_paragraphs=max_paragraphs)
    except OSError:
        return []


def run_tokenizer(device, opts: Options, log: Log) -> Dict:
    """bench_tokenizer.run on paragraphs of /usr/share/doc (its own default corpus when there are none)."""
    try:
        from fastbert.benchmarks.bench_tokenizer import run
    except Exception as e:  # noqa: BLE001
        log(f"  tokenizer: not available ({type(e).__name__}: {e})")
        return {"status": "not available", "reason": f"benchmarks.bench_tokenizer.run: {type(e).__name__}: {e}"}
    texts = tokenizer_texts(4000 if opts.quick else 20000)
    t0 = time.perf_counter()
    try:
        rows = run(texts or None)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        log(f"  tokenizer: error ({type(e).__name__}: {e})")
        return {"status": "error", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
    corpus = (f"{len(texts)} paragraphs, {sum(len(t.encode()) for t in texts) / 1e6:.2f} MB of /usr/share/doc"
              if texts else "bench_tokenizer's default corpus")
    log(f"  tokenizer: done in {time.perf_counter() - t0:.1f}s")
    return {"status": "ok", "corpus": corpus, "rows": jsonable(rows)}


# ------------------------------------------------------------------------------------------------------
# A suite
# ------------------------------------------------------------------------------------------------------
def _notes(device, env, opts: Options) -> List[str]:
    notes = []
    if opts.triton_interpret and device.type == "cpu":
        notes.append("--triton-interpret: the Triton providers ran under the Triton interpreter; their times "
                     "measure the interpreter, not fastbert (a check of the runner's GPU path only).")
    if device.type == "cpu":
        notes += ["CPU run: only what makes sense on a CPU (the PyTorch path vs Hugging Face, fp32, the tokenizer). "
                  + P_TRITON_NOTE,
                  f"{env['cpu_cores_usable']}-core CPU shared with other jobs: timings are noisy (load average "
                  f"{env['load_avg_1m']} at the start). Providers are timed round-robin, one call each per round, "
                  "so the drifting load falls on all alike; medians of perf_counter per call. Peak memory: the "
                  "process's peak RSS during one call, models and inputs included.",
                  "GPU numbers are not in this file: run `python -m benchmarks --suite gpu` on a GPU."]
    else:
        notes += ["GPU timing: warm-up, one CUDA-event pair per call, several input sets cycled, medians and p90; "
                  "peak memory = torch.cuda.max_memory_allocated over the timed calls (weights included)."]
    notes += ["Every provider uses the same weights and inputs and was checked against Hugging Face eager in fp32 "
              "(valid positions) before it was timed; tokens/s counts real (non-padding) tokens.",
              "Training step = forward + backward + AdamW on an encoder-only loss (mean over real tokens of "
              "(h . v)^2, v a fixed random unit vector), dropout on"
              + (", AMP autocast." if device.type == "cuda" else ", fp32.")]
    return notes


def run_suite(suite: str, opts: Options, sections: List[str]) -> int:
    """Measure the plan of ``suite`` (its steps in ``sections``), then the per-op benchmarks and the tokenizer
    when asked; the results JSON is rewritten after every section (``partial`` until the end)."""
    device = torch.device("cuda" if suite == "gpu" else "cpu")
    started = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    env = environment(device)
    log(f"fastbert benchmarks, {suite} suite{' (quick)' if opts.quick else ''} on {hardware_line(env)}")
    results = {"suite": suite, "quick": opts.quick, "environment": env, "notes": _notes(device, env, opts),
               "encoder": [], "corpus_lengths": {k: v for k, v in common.load_corpus_lengths().items()
                                                 if k != "lengths"}}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references stay fp32
        torch.backends.cudnn.allow_tf32 = False
    stem = results_stem(results, opts.out, opts.tag)
    results["partial"] = True  # until write_report: each section's results are flushed as it ends

    def flush():
        results["wall_s"] = round(time.perf_counter() - started, 1)
        write_json(results, stem)

    for step in plan_for(suite, opts.quick, opts.models):
        if step.section not in sections:
            continue
        log(f"{step.section}: {step.model} {step.dtype}")
        try:
            results["encoder"] += run_encoder_section(step, device, opts, log)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            log(f"{step.section} {step.model} {step.dtype}: error {type(e).__name__}: {e}")
            results.setdefault("errors", []).append(f"{step.section} {step.model} {step.dtype}: "
                                                    f"{type(e).__name__}: {e}")
        flush()
    if "ops" in sections:
        log("ops: per-op benchmarks")
        results["ops"] = {}
        run_ops(device, log, out=results["ops"], flush=flush)
    if "tokenizer" in sections:
        log("tokenizer")
        results["tokenizer"] = run_tokenizer(device, opts, log)
        flush()
    if device.type == "cuda":
        results["targets"] = evaluate_targets(results["encoder"])
    results["wall_s"] = round(time.perf_counter() - started, 1)
    write_report(results, stem, plots=opts.plots, readme=opts.readme, log=log)
    print_summary(results)
    bad = [r for r in results["encoder"] if r.status in ("failed check", "error")]
    if bad:
        log(f"{len(bad)} measurement(s) failed their check or errored: see the status column")
    return 0
