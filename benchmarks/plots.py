"""PNG plots of the speed-ups: one figure per section (inference, training), one panel per model and dtype,
workloads (fixed shapes and length mixes) along x, one bar per provider.

The bar height is the provider's speed-up over Hugging Face SDPA (1.0 = as fast), or over Hugging Face
eager when SDPA was not measured. matplotlib is optional: without it no PNG is drawn and the runner still
writes its JSON and tables.
"""
from pathlib import Path
from typing import Callable, Dict, List

from fastbert.benchmarks.common import hardware_line
from fastbert.benchmarks.plan import ENCODER_SECTIONS

COLORS = {"fastbert-triton-unpad": "#d62728", "fastbert-triton-padded": "#ff9896",
          "fastbert-triton-graph": "#8c564b", "fastbert-torch": "#1f77b4", "hf-eager": "#7f7f7f",
          "hf-sdpa": "#bcbd22", "hf-compile": "#2ca02c"}


def _baseline(rows: List) -> str:
    for base in ("hf-sdpa", "hf-eager"):
        if any(r.provider == base and r.ok for r in rows):
            return base
    return ""


def draw(results: Dict, stem: Path, log: Callable = print) -> List[str]:
    """One PNG per encoder section of ``results`` (its rows: report.Row), ``<stem>_<section>.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 - no matplotlib: tables and JSON only
        log(f"no plots: matplotlib is not available ({type(e).__name__}: {e})")
        return []
    paths = []
    for section in ENCODER_SECTIONS:
        rows = [r for r in results["encoder"] if r.section == section]
        panels = list(dict.fromkeys((r.model, r.dtype) for r in rows))
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.2 * len(panels)), squeeze=False)
        for ax, (model, dtype) in zip(axes[:, 0], panels):
            panel = [r for r in rows if r.model == model and r.dtype == dtype]
            base = _baseline(panel)
            workloads = list(dict.fromkeys(r.workload for r in panel))
            providers = [p for p in dict.fromkeys(r.provider for r in panel)
                         if any(r.provider == p and r.ok for r in panel)]
            width = 0.8 / max(1, len(providers))
            for j, p in enumerate(providers):
                xs, ys = [], []
                for i, w in enumerate(workloads):
                    r = next((r for r in panel if r.provider == p and r.workload == w), None)
                    s = r.speedups.get(base) if r and base else None
                    if s:
                        xs.append(i + (j - (len(providers) - 1) / 2) * width)
                        ys.append(s)
                bars = ax.bar(xs, ys, width, label=p, color=COLORS.get(p))
                for b, y in zip(bars, ys):
                    ax.annotate(f"{y:.2f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom",
                                fontsize=6, rotation=90, xytext=(0, 2), textcoords="offset points")
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(workloads)))
            pads = {r.workload: r.pad_fraction for r in panel}
            ax.set_xticklabels([f"{w}\n({100 * pads[w]:.0f}% pad)" for w in workloads], fontsize=7)
            ax.set_ylabel(f"speed-up vs {base or '?'}")
            ax.set_title(f"{section}: {model} {dtype}", fontsize=9)
            ax.margins(y=0.15)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
        fig.suptitle(f"fastbert {section} speed-up ({results['suite']} suite)\n"
                     f"{hardware_line(results['environment'])}", fontsize=8)
        fig.tight_layout()
        path = f"{stem}_{section}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths
