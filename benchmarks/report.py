"""The benchmark report: the result row, the tables, the targets, and the one path that writes a run's files
(JSON, markdown, plots, README's bench section), after a run (``runner.py``) or from a results JSON
(``--render``)."""
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from fastbert.benchmarks.common import hardware_line
from fastbert.benchmarks.plan import BASELINES, ENCODER_SECTIONS, TARGET_DTYPE, TARGET_MODEL, TARGETS


@dataclass
class Row:
    """One provider on one workload of a (section, model, dtype): its measurement, or why there is none."""
    section: str
    model: str
    dtype: str
    workload: str
    kind: str
    batch: int
    seqlen: int
    real_tokens: float  # per input set, mean over the sets
    padded_tokens: float
    pad_fraction: float
    provider: str
    status: str = "ok"  # ok | skipped | failed check | error
    reason: Optional[str] = None
    median_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    min_ms: Optional[float] = None
    n_calls: Optional[int] = None
    tokens_per_s: Optional[float] = None  # real tokens at the median time
    peak_mem_mb: Optional[float] = None
    memory_kind: Optional[str] = None
    check: Optional[str] = None  # the check's errors, short
    check_detail: Optional[Dict] = None
    notes: Optional[List[str]] = None
    times_ms: Optional[List[float]] = None  # the per-call times kept (every times_kept_every-th)
    times_kept_every: Optional[int] = None
    host_ms: Optional[float] = None
    speedups: Dict[str, Optional[float]] = field(default_factory=dict)  # baseline -> its median ms / this one's
    weights: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> Dict:
        """The row as the results JSON holds it (speed-ups as ``speedup_vs_<baseline>`` keys)."""
        d = asdict(self)
        speedups, weights = d.pop("speedups"), d.pop("weights")
        d.update({f"speedup_vs_{b}": v for b, v in speedups.items()})
        d["weights"] = weights
        return d

    @classmethod
    def from_json(cls, d: Dict) -> "Row":
        d = dict(d)
        speedups = {k[len("speedup_vs_"):]: d.pop(k) for k in list(d) if k.startswith("speedup_vs_")}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"a results row has keys this runner does not know: {sorted(unknown)} "
                             "(written by another version of benchmarks/?)")
        return cls(**d, speedups=speedups)


def fastbert_best(by_provider: Dict[str, Row]) -> Optional[Row]:
    """The fastest fastbert provider among rows of one workload, or None."""
    ok = [r for n, r in by_provider.items() if n.startswith("fastbert") and r.ok]
    return min(ok, key=lambda r: r.median_ms) if ok else None


def _by_workload(rows: List[Row], section: str) -> Dict[tuple, Dict[str, Row]]:
    groups: Dict[tuple, Dict[str, Row]] = {}
    for r in rows:
        if r.section == section:
            groups.setdefault((r.model, r.dtype, r.workload), {})[r.provider] = r
    return groups


# ------------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------------
def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def _speedup(v) -> str:
    return f"{v:.2f}x" if v else "–"


def summary_table(rows: List[Row], section: str) -> str:
    """One line per (model, dtype, workload): median ms of every provider, then the best fastbert's
    speed-ups. Markdown."""
    groups = _by_workload(rows, section)
    if not groups:
        return ""
    rows = [r for r in rows if r.section == section]
    providers = [p for p in dict.fromkeys(r.provider for r in rows) if any(r.provider == p and r.ok for r in rows)]
    head = ["model", "dtype", "workload", "pad %"] + [f"{p} ms" for p in providers] + \
           ["best fastbert", "tok/s", "vs eager", "vs sdpa", "vs compile"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, dtype, workload), by in groups.items():
        cells = [model, dtype, workload, f"{100 * next(iter(by.values())).pad_fraction:.0f}"]
        for p in providers:
            r = by.get(p)
            cells.append(_fmt(r.median_ms, ".3f") if r and r.ok else
                         ("fail" if r and r.status == "failed check" else "–"))
        best = fastbert_best(by)
        if best:
            cells += [best.provider.replace("fastbert-", ""), _fmt(best.tokens_per_s, ",.0f")]
            cells += [_speedup(best.speedups.get(b)) for b in BASELINES]
        else:
            cells += ["–"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def full_table(rows: List[Row], section: str) -> str:
    rows = [r for r in rows if r.section == section]
    if not rows:
        return ""
    head = ["model", "dtype", "workload", "provider", "median ms", "p90 ms", "host ms", "tokens/s", "peak MB",
            "vs eager", "vs sdpa", "vs compile", "check err", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r.model, r.dtype, r.workload, r.provider, _fmt(r.median_ms, ".3f"), _fmt(r.p90_ms, ".3f"),
            _fmt(r.host_ms, ".3f"), _fmt(r.tokens_per_s, ",.0f"), _fmt(r.peak_mem_mb, ",.0f"),
            *[_speedup(r.speedups.get(b)) for b in BASELINES], r.check or "–",
            "ok" if r.ok else f"{r.status}: {r.reason}"]) + " |")
    return "\n".join(lines)


def generic_table(rows) -> str:
    """The per-op and tokenizer results: a list of records as a table, one record as key | value."""
    if isinstance(rows, dict):
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
# Targets (plan.TARGETS: the issue's, on one H100, bf16, BERT-base)
# ------------------------------------------------------------------------------------------------------
def evaluate_targets(rows: List[Row]) -> List[Dict]:
    out = []
    for t in TARGETS:
        by = {r.provider: r for r in rows if r.section == t.section and r.model == TARGET_MODEL
              and r.dtype == TARGET_DTYPE and r.workload == t.workload}
        best = fastbert_best(by)
        if t.baseline is None:  # a latency
            value = best.median_ms if best else None
            goal, met = f"<= {t.goal} ms", None if value is None else value <= t.goal
        else:
            value = best.speedups.get(t.baseline) if best else None
            goal, met = f">= {t.goal}x", None if value is None else value >= t.goal
        out.append({"target": t.label, "goal": goal, "measured": value,
                    "provider": best.provider if best else None, "met": met})
    return out


def targets_table(targets: List[Dict]) -> str:
    lines = ["| target | goal | measured | by | met |", "|---|---|---|---|---|"]
    for t in targets:
        m = t["measured"]
        shown = "not measured" if m is None else (f"{m:.3f} ms" if t["goal"].endswith("ms") else f"{m:.2f}x")
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['goal']} | {shown} | {t['provider'] or '–'} | {met} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# Markdown and README
# ------------------------------------------------------------------------------------------------------
def markdown_report(results: Dict, plots: List[str]) -> str:
    env = results["environment"]
    parts = [f"# fastbert benchmarks: {results['suite']} suite{' (quick)' if results['quick'] else ''}", "",
             f"Taken {env['date_utc']} on **{hardware_line(env)}**; fastbert commit "
             f"`{(env['git_commit'] or 'unknown')[:12]}`"
             f"{' (working tree had uncommitted changes)' if env['git_dirty'] else ''}.", ""]
    parts += [f"- {n}" for n in results["notes"]] + [""]
    rows = results["encoder"]
    sections = [s for s in ENCODER_SECTIONS if any(r.section == s for r in rows)]
    for section in sections:
        parts += [f"## {section.capitalize()}: median ms per provider, best fastbert's speed-up", "",
                  summary_table(rows, section), ""]
    if results.get("targets"):
        parts += ["## Targets (H100, bf16, BERT-base)", "", targets_table(results["targets"]), ""]
    for p in plots:
        parts += [f"![{Path(p).stem}]({Path(p).name})", ""]
    for section in sections:
        parts += [f"## {section.capitalize()}: every provider", "", full_table(rows, section), ""]
    if results.get("ops"):
        parts += ["## Per-op benchmarks", ""]
        for op, res in results["ops"].items():
            parts += [f"### {op}", "",
                      generic_table(res["rows"]) if res["status"] == "ok" else f"{res['status']}: {res['reason']}", ""]
    tok = results.get("tokenizer")
    if tok:
        parts += ["## Tokenizer", ""]
        parts += ([f"Corpus: {tok['corpus']}", "", generic_table(tok["rows"]), ""] if tok["status"] == "ok"
                  else [f"{tok['status']}: {tok['reason']}", ""])
    return "\n".join(parts)


def update_readme(readme: Path, results: Dict, md_path: Path, plots: List[str]) -> None:
    """Rewrite the section of ``readme`` between the bench markers with this run's summary."""
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
    for section in ENCODER_SECTIONS:
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


def print_summary(results: Dict) -> None:
    """The summary tables (and targets) on stdout, at the end of a run."""
    print()
    for section in ENCODER_SECTIONS:
        table = summary_table(results["encoder"], section)
        if table:
            print(f"{section}: median ms; speed-ups of the fastest fastbert provider\n{table}\n")
    if results.get("targets"):
        print(targets_table(results["targets"]) + "\n")


# ------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------
def results_stem(results: Dict, out: Path, tag: Optional[str]) -> Path:
    """``out/<suite>[-quick]_<device>[_<tag>]_<date>``: the run's files are this plus .json, .md, _<section>.png."""
    env = results["environment"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")[:40]
    stamp = env["date_utc"][:16].replace(":", "").replace("-", "").replace("T", "-")
    return out / "_".join(x for x in (results["suite"] + ("-quick" if results["quick"] else ""), slug, tag, stamp)
                          if x)


def jsonable(obj):
    if isinstance(obj, Row):
        return jsonable(obj.to_json())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return str(obj)


def write_json(results: Dict, stem: Path) -> Path:
    """Write ``<stem>.json`` atomically: a run killed mid-write leaves the previous complete file."""
    path = stem.with_suffix(".json")
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(jsonable(results), f, indent=1)
    os.replace(tmp, path)
    return path


def read_results(path: Path) -> Dict:
    """A results JSON with its encoder rows as Rows."""
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    results["encoder"] = [Row.from_json(r) for r in results["encoder"]]
    return results


def write_report(results: Dict, stem: Path, *, plots: bool = True, with_json: bool = True,
                 readme: Optional[Path] = None, log: Callable[[str], None] = print) -> List[Path]:
    """The one way a run's files are written: the plots, ``<stem>.json`` (``with_json``; the run is then
    complete), ``<stem>.md`` and, with ``readme``, its bench section. Returns the paths written."""
    from fastbert.benchmarks import plots as plots_mod

    drawn = plots_mod.draw(results, stem, log) if plots else []
    results["plots"] = [Path(p).name for p in drawn]
    written = []
    if with_json:
        results.pop("partial", None)
        written.append(write_json(results, stem))
    md_path = stem.with_suffix(".md")
    md_path.write_text(markdown_report(results, drawn) + "\n", encoding="utf-8")
    written += [md_path] + [Path(p) for p in drawn]
    log("wrote " + ", ".join(map(str, written)))
    if readme is not None:
        update_readme(readme, results, md_path, drawn)
        log(f"updated {readme.name} between the bench markers")
    return written
