"""The benchmark runner: ``fastbert bench`` (``python -m fastbert.benchmarks``; in a checkout also ``python -m benchmarks``).

    python -m benchmarks                    gpu suite when CUDA is there, else the cpu suite
    python -m benchmarks --suite cpu --quick
    python -m benchmarks --only inference   one section: inference, training, ops, tokenizer
    python -m benchmarks --out /tmp/bench --update-readme

Prints a table, writes ``<stem>.json`` (environment + raw numbers), ``<stem>.md`` (tables) and PNG plots of
the speed-ups into ``--out`` (default ``benchmarks/results/``). See benchmarks/README.md for the columns.
"""
import argparse
import gc
import importlib
import inspect
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import common
from .common import (corpus_lengths, environment, fixed_lengths, hardware_line, padded_fraction_lengths,
                     uniform_lengths)
from .timer import time_calls, time_op, time_round_robin

# In a source checkout the results go beside the benchmarks (benchmarks/results/, committed); an installed
# fastbert writes them under the current directory, never into site-packages.
DEFAULT_OUT = (Path(__file__).resolve().parent / "results" if (common.REPO_ROOT / ".git").exists()
               else Path.cwd() / "fastbert-bench-results")
SECTIONS = ("inference", "training", "pretraining", "ops", "tokenizer")
BASELINES = ("hf-eager", "hf-sdpa", "hf-compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------------
# Workloads
# ------------------------------------------------------------------------------------------------------
@dataclass
class Workload:
    kind: str  # fixed | uniform | pad50 | corpus
    batch: int
    seqlen: int  # padded width: fixed length, or the longest allowed row

    @property
    def name(self) -> str:
        if self.kind == "fixed":
            return f"fixed {self.batch}x{self.seqlen}"
        if self.kind == "uniform":
            return f"uniform 32..{self.seqlen} B={self.batch}"
        if self.kind == "pad50":
            return f"50% pad {self.batch}x{self.seqlen}"
        return f"corpus B={self.batch}"

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed"

    def lengths(self, k: int) -> List[int]:
        """Row lengths of input set ``k`` (each set draws its own mix)."""
        if self.kind == "fixed":
            return fixed_lengths(self.batch, self.seqlen)
        if self.kind == "uniform":
            return uniform_lengths(self.batch, min(32, self.seqlen), self.seqlen, seed=1000 + k)
        if self.kind == "pad50":
            return padded_fraction_lengths(self.batch, self.seqlen, 0.5, seed=2000 + k)
        return [min(n, self.seqlen) for n in corpus_lengths(self.batch, seed=3000 + k)]


def W(spec: str) -> Workload:
    kind, b, s = spec.split(":")
    return Workload(kind, int(b), int(s))


GPU_SHAPES = ["fixed:1:128", "fixed:32:128", "fixed:32:512", "fixed:256:128", "uniform:32:512",
              "pad50:32:512", "pad50:256:128", "corpus:256:512"]

# (section, model, dtype, workloads); the GPU matrix of the issue, the CPU subset that fits 2 cores.
PLANS = {
    ("gpu", False): [
        ("inference", "bert-base", "bf16", GPU_SHAPES),
        ("inference", "bert-base", "fp16", GPU_SHAPES[:5] + ["pad50:32:512"]),
        ("inference", "bert-large", "bf16", GPU_SHAPES),
        ("inference", "minilm", "bf16", GPU_SHAPES),
        ("training", "bert-base", "bf16", ["fixed:32:128", "fixed:32:512", "pad50:32:512", "corpus:256:512"]),
        ("training", "bert-large", "bf16", ["fixed:32:128", "pad50:32:512"]),
        ("training", "minilm", "bf16", ["fixed:32:128", "pad50:32:512"]),
        ("pretraining", "bert-base", "bf16", ["fixed:32:128", "fixed:32:512", "pad50:32:512"]),
        ("pretraining", "bert-large", "bf16", ["fixed:32:128"]),
    ],
    ("gpu", True): [
        ("inference", "bert-base", "bf16", ["fixed:1:128", "fixed:32:128", "pad50:32:512"]),
        ("training", "bert-base", "bf16", ["fixed:32:128"]),
        ("pretraining", "bert-base", "bf16", ["fixed:32:128", "pad50:32:512"]),
    ],
    ("cpu", False): [
        ("inference", "minilm", "fp32", ["fixed:1:128", "fixed:8:128", "pad50:8:128", "uniform:4:512",
                                         "corpus:32:512"]),
        ("inference", "bert-base", "fp32", ["fixed:1:128", "corpus:8:512"]),
        ("training", "minilm", "fp32", ["fixed:8:128", "corpus:16:512"]),
        ("pretraining", "minilm", "fp32", ["fixed:8:128", "pad50:8:128"]),
    ],
    ("cpu", True): [
        ("inference", "minilm", "fp32", ["fixed:1:128", "fixed:8:128", "corpus:16:512"]),
        ("training", "minilm", "fp32", ["fixed:8:64", "pad50:8:64"]),
        ("pretraining", "minilm", "fp32", ["pad50:8:64"]),
    ],
}

# Per-measurement effort: (warm-up calls, timed calls, input sets, min seconds, max seconds)
EFFORT = {("cuda", False): (10, 60, 4, 0.5, 20.0), ("cuda", True): (5, 20, 3, 0.2, 5.0),
          ("cpu", False): (2, 10, 3, 0.0, 6.0), ("cpu", True): (1, 5, 2, 0.0, 2.0)}


# ------------------------------------------------------------------------------------------------------
# Encoder sections
# ------------------------------------------------------------------------------------------------------
def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row(section, model_name, dtype_name, w, inputs, provider, **fields):
    real = sum(sum(x["lengths"]) for x in inputs) / len(inputs)
    padded = sum(x["input_ids"].numel() for x in inputs) / len(inputs)
    row = {"section": section, "model": model_name, "dtype": dtype_name, "workload": w.name, "kind": w.kind,
           "batch": w.batch, "seqlen": w.seqlen, "real_tokens": real, "padded_tokens": padded,
           "pad_fraction": round(1 - real / padded, 4), "provider": provider, "status": "ok", "reason": None}
    row.update(fields)
    return row


def run_encoder_section(section, model_name, dtype_name, workloads, device, args, log) -> List[Dict]:
    from . import providers as P

    dtype = DTYPES[dtype_name]
    n_sets = EFFORT[(device.type, args.quick)][2]
    ref = P.reference_model(model_name, seed=0)
    vocab = ref.config.vocab_size
    data = {w.name: [P.make_inputs(w.lengths(k), vocab, device, seed=17 * k + 1) for k in range(n_sets)]
            for w in workloads}
    training = section in ("training", "pretraining")
    amp = None if (dtype == torch.float32 or device.type != "cuda") else dtype
    if section == "pretraining":
        return _run_pretraining(ref, model_name, dtype_name, workloads, data, device, amp, args, log)

    # The reference: Hugging Face eager in fp32 on this device; the baseline error: the same in `dtype`.
    t0 = time.perf_counter()
    refs, base_err = {}, {}
    hf32 = P.build_hf(ref, "eager").to(device).eval()
    for w in workloads:
        x = data[w.name][0]
        if training:
            refs[w.name] = _to_cpu(_train_check_values(hf32, x, device, None))
        else:  # kept on the host, so the references do not count in the providers' peak memory
            with torch.no_grad():
                refs[w.name] = hf32(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state.cpu()
    if training:
        for w in workloads:
            base_err[w.name] = (_train_errors(_to_cpu(_train_check_values(hf32, data[w.name][0], device, amp)),
                                              refs[w.name]) if amp else {"loss": 0.0, "grad": 0.0})
    elif dtype != torch.float32:
        hf_low = hf32.to(dtype)
        with torch.no_grad():
            for w in workloads:
                x = data[w.name][0]
                out = hf_low(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
                base_err[w.name] = P.valid_max_abs_err(out.cpu(), refs[w.name], x["attention_mask"].cpu())
    else:
        base_err = {w.name: 0.0 for w in workloads}
    del hf32
    _free(device)
    log(f"  reference (HF eager fp32) ready in {time.perf_counter() - t0:.1f}s; weights: {ref.weights_note}")

    def build(name):
        if training:
            return P.build_training(name, ref, device, amp, compile_cpu=args.compile_cpu)
        return P.build_inference(name, ref, device, dtype, compile_cpu=args.compile_cpu)

    rows = _run_providers(section, model_name, dtype_name, workloads, data, refs, base_err, dtype, amp, device,
                          args, log, build)
    for r in rows:
        r["weights"] = ref.weights_note
    return rows


def _run_providers(section, model_name, dtype_name, workloads, data, refs, base_err, dtype, amp, device, args,
                   log, build) -> List[Dict]:
    """Build each provider (``build(name)``: a Built, or raises Skip), check it against the reference, time it
    (round-robin on CPU); one row per provider and workload, a broken provider reported, never fatal."""
    from . import providers as P

    warmup, reps, _, min_s, max_s = EFFORT[(device.type, args.quick)]
    reps = args.reps or reps
    training = section in ("training", "pretraining")
    rows = []
    interleave = device.type == "cpu" and not args.no_interleave  # all providers built, timed round-robin
    ready: Dict[str, object] = {}
    for name in args.providers:
        if name not in P.PROVIDERS:
            raise SystemExit(f"unknown provider {name!r}; choose from {', '.join(P.PROVIDERS)}")
        t0 = time.perf_counter()
        if name == "hf-compile" and device.type == "cuda" and model_name not in args.compile_models.split(","):
            rows += [_row(section, model_name, dtype_name, w, data[w.name], name, status="skipped",
                          reason=f"torch.compile measured on {args.compile_models} only (compile time; "
                                 "--compile-models to add)") for w in workloads]
            log(f"  {name:24s} skipped: not in --compile-models")
            continue
        try:
            built = build(name)
        except P.Skip as e:
            rows += [_row(section, model_name, dtype_name, w, data[w.name], name, status="skipped",
                          reason=str(e)) for w in workloads]
            log(f"  {name:24s} skipped: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - one broken provider must not end the run
            traceback.print_exc(file=sys.stderr)
            rows += [_row(section, model_name, dtype_name, w, data[w.name], name, status="error",
                          reason=f"build: {type(e).__name__}: {e}") for w in workloads]
            log(f"  {name:24s} error while building: {type(e).__name__}: {e}")
            continue
        if interleave:
            ready[name] = built
            continue
        for w in workloads:
            rows.append(_measure(section, model_name, dtype_name, w, data[w.name], built, refs[w.name],
                                 base_err[w.name], dtype, amp, training, device, warmup, reps, min_s, max_s))
            _log_row(log, rows[-1])
        del built
        _free(device)
        log(f"  {name:24s} done in {time.perf_counter() - t0:.1f}s")
    if ready:
        for w in workloads:
            rows += _measure_interleaved(section, model_name, dtype_name, w, data[w.name], ready, refs[w.name],
                                         base_err[w.name], dtype, amp, training, device, warmup, reps, max_s, log)
        ready.clear()
        _free(device)
    _add_speedups(rows)
    return rows


def _run_pretraining(encoder, model_name, dtype_name, workloads, data, device, amp, args, log) -> List[Dict]:
    """The pre-training step with the MLM head (benchmarks/pretraining.py): checked against HF eager fp32's
    loss and gradients, then timed provider by provider (round-robin on CPU)."""
    from . import pretraining as PT
    ref = PT.reference_model(encoder, seed=0)
    vocab = ref.config.vocab_size
    data = {name: [PT.add_fields(x, vocab, seed=31 * k + 7) for k, x in enumerate(xs)] for name, xs in data.items()}
    t0 = time.perf_counter()
    hf32 = PT.build("hf-eager", ref, device, None)
    refs = {w.name: _to_cpu(hf32.loss_and_grads(data[w.name][0])) for w in workloads}
    del hf32
    base_err = {w.name: {"loss": 0.0, "grad": 0.0} for w in workloads}
    if amp is not None:
        hf_amp = PT.build("hf-eager", ref, device, amp)
        base_err = {w.name: _train_errors(_to_cpu(hf_amp.loss_and_grads(data[w.name][0])), refs[w.name])
                    for w in workloads}
        del hf_amp
    _free(device)
    log(f"  reference (HF eager fp32, BertForPreTraining) ready in {time.perf_counter() - t0:.1f}s")
    rows = _run_providers("pretraining", model_name, dtype_name, workloads, data, refs, base_err,
                          DTYPES[dtype_name], amp, device, args, log,
                          lambda name: PT.build(name, ref, device, amp, compile_cpu=args.compile_cpu))
    for r in rows:
        r["weights"] = ref.weights_note
    return rows


def _log_row(log, r):
    if r["status"] == "ok":
        host = f"  host {r['host_ms']:.3f} ms" if r.get("host_ms") is not None else ""
        log(f"  {r['provider']:24s} {r['workload']:24s} median {r['median_ms']:9.3f} ms  p90 {r['p90_ms']:9.3f} ms  "
            f"{r['tokens_per_s']:12,.0f} tok/s  err {r['check']}{host}")
    else:
        log(f"  {r['provider']:24s} {r['workload']:24s} {r['status']}: {r['reason']}")


def _train_check_values(model, x, device, amp):
    """Loss and checked gradients of ``model`` (eval mode: no dropout), fp32 or under autocast."""
    from . import providers as P

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


def _measure(section, model_name, dtype_name, w, inputs, built, ref, base_err, dtype, amp, training, device,
             warmup, reps, min_s, max_s):
    from . import providers as P

    try:
        # 1. check against the reference before anything is timed
        ok, check, check_str = _check(inputs, built, ref, base_err, dtype, amp, training)
        if not ok:
            return _row(section, model_name, dtype_name, w, inputs, built.name, status="failed check",
                        reason=f"outputs differ from HF eager fp32 beyond tolerance: {check}", check_detail=check,
                        check=check_str)
        # 2. time it
        common.reset_peak_memory(device)
        with _grad_mode(training):
            stats = time_calls(built.fn, device, inputs, warmup=warmup, reps=reps, min_s=min_s, max_s=max_s,
                               host=True)
        peak = common.peak_memory_mb(device)
    except P.Skip as e:
        return _row(section, model_name, dtype_name, w, inputs, built.name, status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: reported, the run goes on
        traceback.print_exc(file=sys.stderr)
        _free(device)
        return _row(section, model_name, dtype_name, w, inputs, built.name, status="error",
                    reason=f"{type(e).__name__}: {str(e)[:300]}")
    return _ok_row(section, model_name, dtype_name, w, inputs, built, stats, peak, device, check, check_str)


def _grad_mode(training):
    return torch.enable_grad() if training else torch.no_grad()


def _ok_row(section, model_name, dtype_name, w, inputs, built, stats, peak, device, check, check_str):
    real = sum(sum(x["lengths"]) for x in inputs) / len(inputs)
    times_ms, every = stats.kept()
    return _row(section, model_name, dtype_name, w, inputs, built.name, median_ms=stats.median_ms,
                p90_ms=stats.p90_ms, min_ms=stats.min_ms, n_calls=stats.n,
                tokens_per_s=real / (stats.median_ms / 1e3), peak_mem_mb=peak,
                memory_kind=common.memory_kind(device), check=check_str, check_detail=check,
                notes=built.notes, times_ms=times_ms, times_kept_every=every, host_ms=stats.host_ms)


def _measure_interleaved(section, model_name, dtype_name, w, inputs, ready, ref, base_err, dtype, amp, training,
                         device, warmup, reps, max_s, log) -> List[Dict]:
    """CPU: check every provider, then time them round-robin, one call each per round, so that the load of a
    shared machine, which drifts over seconds, falls on all of them alike. Peak RSS: one more call each."""
    rows, passing, checks = [], {}, {}
    for name, built in ready.items():
        try:
            ok, check, check_str = _check(inputs, built, ref, base_err, dtype, amp, training)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            rows.append(_row(section, model_name, dtype_name, w, inputs, name, status="error",
                             reason=f"{type(e).__name__}: {str(e)[:300]}"))
            continue
        if ok:
            passing[name], checks[name] = built, (check, check_str)
        else:
            rows.append(_row(section, model_name, dtype_name, w, inputs, name, status="failed check",
                             reason=f"outputs differ from HF eager fp32 beyond tolerance: {check}",
                             check_detail=check, check=check_str))
    if not passing:
        return rows
    with _grad_mode(training):
        stats = time_round_robin({n: b.fn for n, b in passing.items()}, device, inputs, warmup=warmup, reps=reps,
                                 max_s=max_s)
        for name, built in passing.items():
            common.reset_peak_memory(device)
            built.fn(inputs[0])
            peak = common.peak_memory_mb(device)
            rows.append(_ok_row(section, model_name, dtype_name, w, inputs, built, stats[name], peak, device,
                                *checks[name]))
            _log_row(log, rows[-1])
    return rows


def _check(inputs, built, ref, base_err, dtype, amp, training):
    """Is the provider's output (training: loss and gradients) close to Hugging Face eager fp32's?"""
    from . import providers as P

    if training:
        errs = _train_errors(_to_cpu(built.loss_and_grads(inputs[0])), ref)
        floor = 1e-4 if amp is None else 2e-2
        ok = all(errs[k] <= 3 * base_err[k] + floor for k in errs)
        check = {"loss_rel_err": errs["loss"], "grad_rel_err": errs["grad"],
                 "hf_eager_same_dtype": base_err, "tolerance": f"3x HF eager + {floor}"}
        check_str = f"loss {errs['loss']:.1e} grad {errs['grad']:.1e}"
    else:
        with torch.no_grad():
            out = built.fn(inputs[0])
        err = P.valid_max_abs_err(out.cpu(), ref, inputs[0]["attention_mask"].cpu())
        tol = P.tolerance(dtype, base_err)
        ok = err <= tol
        check = {"max_abs_err": err, "hf_eager_same_dtype": base_err, "tolerance": tol}
        check_str = f"{err:.1e}"
        del out
    return ok, check, check_str


def _add_speedups(rows):
    groups: Dict[tuple, Dict[str, Dict]] = {}
    for r in rows:
        groups.setdefault((r["section"], r["model"], r["dtype"], r["workload"]), {})[r["provider"]] = r
    for by_provider in groups.values():
        for r in by_provider.values():
            for base in BASELINES:
                b = by_provider.get(base)
                ok = r["status"] == "ok" and b is not None and b["status"] == "ok"
                r[f"speedup_vs_{base}"] = b["median_ms"] / r["median_ms"] if ok else None


# ------------------------------------------------------------------------------------------------------
# Sections that live in other modules: per-op benchmarks and the tokenizer
# ------------------------------------------------------------------------------------------------------
def copy_bandwidth(device) -> Optional[Dict]:
    """Measured device-to-device copy bandwidth (1 GiB, far past L2), bytes read + written per second: the
    ceiling the memory-bound ops (LayerNorm, GELU) are reported against."""
    if device.type != "cuda":
        return None
    ms = _copy_ms(device, 2**30)
    _free(device)
    return {"bytes": 2**30, "median_ms": ms, "GB/s": 2 * 2**30 / (ms * 1e-3) / 1e9}


def _copy_ms(device, nbytes) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return time_op(lambda: dst.copy_(src), device).median_ms


def run_ops(device, log, out: Optional[Dict] = None, flush=lambda: None) -> Dict:
    """Each per-op benchmark into ``out`` (filled as it goes; ``flush`` after each op)."""
    out = {} if out is None else out
    copy = copy_bandwidth(device)
    if copy:
        out["copy_bandwidth"] = {"status": "ok", "rows": [copy]}
        log(f"  device-to-device copy: {copy['GB/s']:.0f} GB/s (read + write)")
    for op in ("layer_norm", "gelu", "attention", "lm_head_ce"):
        mod_name = f"benchmarks.bench_{op}"
        try:
            mod = importlib.import_module(mod_name)
            fn = getattr(mod, "run")
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
            out[op] = {"status": "ok", "rows": _jsonable(rows), "seconds": round(time.perf_counter() - t0, 1)}
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


def run_tokenizer(device, args, log) -> Dict:
    try:
        mod = importlib.import_module("benchmarks.bench_tokenizer")
        fn = getattr(mod, "run")
    except Exception as e:  # noqa: BLE001
        log(f"  tokenizer: not available ({type(e).__name__}: {e})")
        return {"status": "not available", "reason": f"benchmarks.bench_tokenizer.run: {type(e).__name__}: {e}"}
    params = inspect.signature(fn).parameters
    kwargs = {}
    texts = tokenizer_texts(4000 if args.quick else 20000)
    for key in ("texts", "corpus", "lines", "corpus_path_or_texts"):
        if key in params and texts:
            kwargs[key] = texts
            break
    if "quick" in params:
        kwargs["quick"] = args.quick
    if "device" in params:
        kwargs["device"] = device
    t0 = time.perf_counter()
    try:
        rows = fn(**kwargs)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        log(f"  tokenizer: error ({type(e).__name__}: {e})")
        return {"status": "error", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
    corpus = (f"{len(texts)} paragraphs, {sum(len(t.encode()) for t in texts) / 1e6:.2f} MB of /usr/share/doc"
              if set(kwargs) & {"texts", "corpus", "lines", "corpus_path_or_texts"} else "bench_tokenizer's default corpus")
    log(f"  tokenizer: done in {time.perf_counter() - t0:.1f}s")
    return {"status": "ok", "corpus": corpus, "rows": _jsonable(rows)}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return str(obj)


# ------------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------------
def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def _fastbert_best(by_provider):
    ok = [r for n, r in by_provider.items() if n.startswith("fastbert") and r["status"] == "ok"]
    return min(ok, key=lambda r: r["median_ms"]) if ok else None


def summary_table(rows: List[Dict], section: str) -> str:
    """One line per (model, dtype, workload): median ms of every provider, then the best fastbert's
    speed-ups. Markdown."""
    rows = [r for r in rows if r["section"] == section]
    if not rows:
        return ""
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows)
                 if any(r["provider"] == p and r["status"] == "ok" for r in rows)]
    head = ["model", "dtype", "workload", "pad %"] + [f"{p} ms" for p in providers] + \
           ["best fastbert", "tok/s", "vs eager", "vs sdpa", "vs compile"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: Dict[tuple, Dict[str, Dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["dtype"], r["workload"]), {})[r["provider"]] = r
    for (model, dtype, workload), by in groups.items():
        any_row = next(iter(by.values()))
        cells = [model, dtype, workload, f"{100 * any_row['pad_fraction']:.0f}"]
        for p in providers:
            r = by.get(p)
            cells.append(_fmt(r.get("median_ms"), ".3f") if r and r["status"] == "ok" else
                         ("fail" if r and r["status"] == "failed check" else "–"))
        best = _fastbert_best(by)
        if best:
            cells += [best["provider"].replace("fastbert-", ""), _fmt(best["tokens_per_s"], ",.0f")]
            cells += [_fmt(best.get(f"speedup_vs_{b}"), ".2f") + ("x" if best.get(f"speedup_vs_{b}") else "")
                      for b in BASELINES]
        else:
            cells += ["–"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def full_table(rows: List[Dict], section: str) -> str:
    rows = [r for r in rows if r["section"] == section]
    if not rows:
        return ""
    head = ["model", "dtype", "workload", "provider", "median ms", "p90 ms", "host ms", "tokens/s", "peak MB",
            "vs eager", "vs sdpa", "vs compile", "check err", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ok = r["status"] == "ok"
        sp = [(_fmt(r.get(f"speedup_vs_{b}"), ".2f") + "x") if r.get(f"speedup_vs_{b}") else "–" for b in BASELINES]
        status = "ok" if ok else f"{r['status']}: {r['reason']}"
        lines.append("| " + " | ".join([r["model"], r["dtype"], r["workload"], r["provider"],
                                          _fmt(r.get("median_ms"), ".3f"), _fmt(r.get("p90_ms"), ".3f"),
                                          _fmt(r.get("host_ms"), ".3f"), _fmt(r.get("tokens_per_s"), ",.0f"), _fmt(r.get("peak_mem_mb"), ",.0f"),
                                          *sp, r.get("check") or "–", status]) + " |")
    return "\n".join(lines)


def generic_table(rows: List[Dict]) -> str:
    if isinstance(rows, dict):  # one record: a key | value table
        flat = {k: v for k, v in rows.items() if not isinstance(v, (list, dict))}
        return "\n".join(["| key | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in flat.items()])
    if not rows or not isinstance(rows, list) or not isinstance(rows[0], dict):
        return "(no rows)"
    keys = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (list, dict))))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def _cell(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


# ------------------------------------------------------------------------------------------------------
# Targets (the issue's, measured on one H100, bf16, BERT-base)
# ------------------------------------------------------------------------------------------------------
def evaluate_targets(rows: List[Dict]) -> List[Dict]:
    def group(section, workload):
        return {r["provider"]: r for r in rows if r["section"] == section and r["model"] == "bert-base"
                and r["dtype"] == "bf16" and r["workload"] == workload}

    targets = []

    def speed(section, workload, base, goal, label):
        by = group(section, workload)
        best = _fastbert_best(by)
        value = best.get(f"speedup_vs_{base}") if best else None
        targets.append({"target": label, "goal": f">= {goal}x", "measured": value,
                        "provider": best["provider"] if best else None,
                        "met": None if value is None else value >= goal})

    speed("inference", "fixed 32x128", "hf-eager", 2.5, "bf16 inference (32,128) vs HF eager")
    speed("inference", "fixed 32x128", "hf-sdpa", 1.7, "bf16 inference (32,128) vs HF SDPA")
    speed("inference", "50% pad 32x512", "hf-sdpa", 2.0, "bf16 inference 50%-padded mix (32x512) vs HF SDPA")
    speed("inference", "fixed 32x128", "hf-compile", 1.2, "bf16 inference (32,128) vs torch.compile(HF)")
    best = _fastbert_best(group("inference", "fixed 1x128"))
    targets.append({"target": "bf16 inference (1,128) latency", "goal": "<= 0.25 ms",
                    "measured": best["median_ms"] if best else None, "provider": best["provider"] if best else None,
                    "met": None if best is None else best["median_ms"] <= 0.25})
    speed("training", "fixed 32x128", "hf-sdpa", 1.5, "encoder training step (32,128), AMP bf16, vs HF SDPA")
    speed("pretraining", "fixed 32x128", "hf-sdpa", 1.5, "pre-training step with MLM head (32,128), AMP bf16, vs HF SDPA")
    return targets


def targets_table(targets) -> str:
    lines = ["| target | goal | measured | by | met |", "|---|---|---|---|---|"]
    for t in targets:
        m = t["measured"]
        shown = "not measured" if m is None else (f"{m:.3f} ms" if "latency" in t["target"] else f"{m:.2f}x")
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['goal']} | {shown} | {t['provider'] or '–'} | {met} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------
def markdown_report(results: Dict, plots: List[str]) -> str:
    env = results["environment"]
    parts = [f"# fastbert benchmarks: {results['suite']} suite{' (quick)' if results['quick'] else ''}", "",
             f"Taken {env['date_utc']} on **{hardware_line(env)}**; fastbert commit "
             f"`{(env['git_commit'] or 'unknown')[:12]}`{' (working tree had uncommitted changes)' if env['git_dirty'] else ''}.",
             ""]
    parts += [f"- {n}" for n in results["notes"]] + [""]
    rows = results["encoder"]
    for section in ("inference", "training", "pretraining"):
        if any(r["section"] == section for r in rows):
            parts += [f"## {section.capitalize()}: median ms per provider, best fastbert's speed-up", "",
                      summary_table(rows, section), ""]
    if results.get("targets"):
        parts += ["## Targets (H100, bf16, BERT-base)", "", targets_table(results["targets"]), ""]
    for p in plots:
        parts += [f"![{Path(p).stem}]({Path(p).name})", ""]
    for section in ("inference", "training", "pretraining"):
        if any(r["section"] == section for r in rows):
            parts += [f"## {section.capitalize()}: every provider", "", full_table(rows, section), ""]
    for key, title in (("ops", "Per-op benchmarks"), ("tokenizer", "Tokenizer")):
        sec = results.get(key)
        if not sec:
            continue
        parts += [f"## {title}", ""]
        if key == "ops":
            for op, res in sec.items():
                parts += [f"### {op}", ""]
                parts += [generic_table(res["rows"]) if res["status"] == "ok" else f"{res['status']}: {res['reason']}", ""]
        else:
            if sec["status"] == "ok":
                parts += [f"Corpus: {sec['corpus']}", "", generic_table(sec["rows"]), ""]
            else:
                parts += [f"{sec['status']}: {sec['reason']}", ""]
    return "\n".join(parts)


def update_readme(readme: Path, results: Dict, md_path: Path, plots: List[str]) -> None:
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    env = results["environment"]
    rel = lambda p: os.path.relpath(p, readme.parent)  # noqa: E731
    body = ["## Benchmarks", "",
            f"Latest results ({results['suite']} suite, {env['date_utc'][:10]}), taken on "
            f"**{hardware_line(env)}**. Full tables, raw numbers and environment: "
            f"[{rel(md_path)}]({rel(md_path)}); how to run: [benchmarks/README.md](benchmarks/README.md).", ""]
    body += [f"- {n}" for n in results["notes"]]
    if env["device_type"] == "cpu":
        body += ["- On CPU fastbert runs the same PyTorch ops as Hugging Face SDPA (no unpadding), so ~1x against "
                 "`hf-sdpa` is the expected result; the speed-ups fastbert is built for need the Triton path on a GPU."]
    body += [""]
    for section in ("inference", "training", "pretraining"):
        table = summary_table(results["encoder"], section)
        if table:
            body += [f"**{section.capitalize()}** (median ms; speed-ups of the fastest fastbert provider)", "",
                     table, ""]
    if results.get("targets"):
        body += [targets_table(results["targets"]), ""]
    tok = results.get("tokenizer") or {}
    if tok.get("status") == "ok" and isinstance(tok.get("rows"), dict):
        r = tok["rows"]
        keys = [k for k in r if k.endswith("_mb_s")]
        body += ["**Tokenizer** (MB/s of text, " + tok["corpus"] + "): "
                 + ", ".join(f"{k[:-5]} {r[k]:.2f}" for k in keys), ""]
    body += [f"![{Path(p).stem}]({rel(p)})" for p in plots[:1]] + [""]
    new = text[: text.index(start) + len(start)] + "\n" + "\n".join(body) + "\n" + text[text.index(end):]
    readme.write_text(new, encoding="utf-8")


# ------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="fastbert bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["cpu", "gpu", "all"], default=None,
                   help="cpu: the PyTorch path vs Hugging Face on CPU; gpu: every provider on CUDA; all: both "
                        "(default: gpu when CUDA is available, else cpu)")
    p.add_argument("--quick", action="store_true", help="a small subset with fewer calls (smoke run)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go (default: %(default)s)")
    p.add_argument("--only", default=None, help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--models", default=None, help="comma-separated subset of the plan's models "
                                                   "(minilm, bert-base, bert-large; tiny replaces them all)")
    p.add_argument("--providers", default=None, help="comma-separated providers (default: all)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per measurement")
    p.add_argument("--compile-models", default="bert-base",
                   help="models for which torch.compile(HF) is measured on GPU (compiling every shape takes "
                        "minutes; default: %(default)s)")
    p.add_argument("--compile-cpu", action="store_true", help="include torch.compile on CPU (slow to compile)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a CPU shared with other jobs, 1 thread gives "
                        "far steadier timings than threads that wait for each other at every op")
    p.add_argument("--triton-interpret", action="store_true",
                   help="CPU only: run the Triton providers under the Triton interpreter, to check the GPU "
                        "path of the runner (timings are meaningless and marked so)")
    p.add_argument("--no-interleave", action="store_true",
                   help="CPU: time the providers one after another (as on GPU) instead of round-robin")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--update-readme", action="store_true",
                   help="rewrite the section between <!-- bench:start --> and <!-- bench:end --> of README.md")
    p.add_argument("--tag", default=None, help="extra word in the results file names")
    p.add_argument("--render", type=Path, default=None,
                   help="measure nothing: rewrite the tables and plots (and README with --update-readme) of "
                        "this results JSON, next to it")
    return p.parse_args(argv)


def plan_for(suite, quick, models_arg) -> List[tuple]:
    plan = PLANS[(suite, quick)]
    if models_arg:
        wanted = models_arg.split(",")
        if wanted == ["tiny"]:  # the runner's own test: the plan's shapes on a tiny encoder
            seen, out = set(), []
            for section, _, dtype, shapes in plan:
                if section not in seen:
                    seen.add(section)
                    out.append((section, "tiny", dtype, shapes))
            return out
        plan = [x for x in plan if x[1] in wanted]
    return plan


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from . import providers as P

    if args.render:
        return render(args)
    args.providers = args.providers.split(",") if args.providers else list(P.PROVIDERS)
    sections = args.only.split(",") if args.only else list(SECTIONS)
    for s in sections:
        if s not in SECTIONS:
            raise SystemExit(f"--only: unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    if args.triton_interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # read by fastbert.ops on every call
        P.INTERPRET_PROVIDERS[:] = [True]
    if args.threads:
        torch.set_num_threads(args.threads)
    has_cuda = torch.cuda.is_available()
    suite = args.suite or ("gpu" if has_cuda else "cpu")
    if suite in ("gpu", "all") and not has_cuda:
        print("--suite gpu needs a CUDA device; none is visible here", file=sys.stderr)
        return 2
    suites = ["cpu", "gpu"] if suite == "all" else [suite]
    status = 0
    for s in suites:
        status |= run_suite(s, args, sections)
    return status


def run_suite(suite, args, sections) -> int:
    device = torch.device("cuda" if suite == "gpu" else "cpu")
    started = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    env = environment(device)
    log(f"fastbert benchmarks, {suite} suite{' (quick)' if args.quick else ''} on {hardware_line(env)}")
    notes = []
    if args.triton_interpret and device.type == "cpu":
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
              "(h . v)^2, v a fixed random unit vector), dropout on" + (", AMP autocast." if device.type == "cuda" else ", fp32.")]
    results = {"suite": suite, "quick": args.quick, "environment": env, "notes": notes, "encoder": [],
               "corpus_lengths": {k: v for k, v in common.load_corpus_lengths().items() if k != "lengths"}}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references stay fp32
        torch.backends.cudnn.allow_tf32 = False

    results["partial"] = True  # until write_results: each section's results are flushed as it ends

    def flush():
        results["wall_s"] = round(time.perf_counter() - started, 1)
        _write_json(results, args)

    for section, model_name, dtype_name, shapes in plan_for(suite, args.quick, args.models):
        if section not in sections:
            continue
        log(f"{section}: {model_name} {dtype_name}")
        workloads = [W(s) for s in shapes]
        try:
            results["encoder"] += run_encoder_section(section, model_name, dtype_name, workloads, device, args, log)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            log(f"{section} {model_name} {dtype_name}: error {type(e).__name__}: {e}")
            results.setdefault("errors", []).append(f"{section} {model_name} {dtype_name}: {type(e).__name__}: {e}")
        flush()
    if "ops" in sections:
        log("ops: per-op benchmarks")
        results["ops"] = {}
        run_ops(device, log, out=results["ops"], flush=flush)
    if "tokenizer" in sections:
        log("tokenizer")
        results["tokenizer"] = run_tokenizer(device, args, log)
        flush()
    if device.type == "cuda":
        results["targets"] = evaluate_targets(results["encoder"])
    results["wall_s"] = round(time.perf_counter() - started, 1)
    return write_results(results, args, log)


P_TRITON_NOTE = "Triton providers are skipped on CPU: Triton kernels need a GPU (the CPU interpreter is no speed measurement)."


def render(args) -> int:
    from . import plots as plots_mod

    results = json.loads(Path(args.render).read_text(encoding="utf-8"))
    stem = Path(args.render).with_suffix("")
    plots = [] if args.no_plots else plots_mod.draw(results, stem, print)
    results["plots"] = [Path(p).name for p in plots]
    md_path = stem.with_suffix(".md")
    md_path.write_text(markdown_report(results, plots) + "\n", encoding="utf-8")
    print(f"wrote {md_path}" + "".join(f", {p}" for p in plots))
    if args.update_readme:
        update_readme(common.REPO_ROOT / "README.md", results, md_path, plots)
        print("updated README.md between the bench markers")
    return 0


def _stem(results, args) -> Path:
    env = results["environment"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")[:40]
    stamp = env["date_utc"][:16].replace(":", "").replace("-", "").replace("T", "-")
    return out / "_".join(x for x in (results["suite"] + ("-quick" if results["quick"] else ""), slug, args.tag,
                                      stamp) if x)


def _write_json(results, args) -> Path:
    """Write the results JSON (atomically: a run killed mid-write leaves the previous complete file)."""
    path = _stem(results, args).with_suffix(".json")
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_jsonable(results), f, indent=1)
    os.replace(tmp, path)
    return path


def write_results(results, args, log) -> int:
    from . import plots as plots_mod

    stem = _stem(results, args)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    plots = [] if args.no_plots else plots_mod.draw(results, stem, log)
    results["plots"] = [Path(p).name for p in plots]
    results.pop("partial", None)
    _write_json(results, args)
    md = markdown_report(results, plots)
    md_path.write_text(md + "\n", encoding="utf-8")
    print()
    for section in ("inference", "training", "pretraining"):
        table = summary_table(results["encoder"], section)
        if table:
            print(f"{section}: median ms; speed-ups of the fastest fastbert provider\n{table}\n")
    if results.get("targets"):
        print(targets_table(results["targets"]) + "\n")
    log(f"wrote {json_path}, {md_path}" + "".join(f", {p}" for p in plots))
    if args.update_readme:
        update_readme(common.REPO_ROOT / "README.md", results, md_path, plots)
        log("updated README.md between the bench markers")
    bad = [r for r in results["encoder"] if r["status"] in ("failed check", "error")]
    if bad:
        log(f"{len(bad)} measurement(s) failed their check or errored: see the status column")
    return 0


if __name__ == "__main__":
    sys.exit(main())
