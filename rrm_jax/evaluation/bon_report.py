"""Best-of-N summaries: ``summary.json`` (accuracy per strategy and n, judge comparisons and tokens per query),
``summary.md`` (the same as tables) and ``bon.png`` (accuracy against n, one line per strategy, log2 x axis).

An n is scored on the queries with at least n candidates; a judge pick that could not be made (an over-long
comparison, recorded with an ``error``) is left out of that strategy's accuracy and counted under ``errors``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def summarize_bon(
    records: Sequence[dict], *, strategies: Sequence[str], ns: Sequence[int], meta: dict | None = None
) -> dict:
    """``{"accuracy": {strategy: {n: acc}}, "comparisons_per_query": ..., "tokens_per_query": ..., ...}``."""
    acc: dict[str, dict[str, float]] = {}
    comps: dict[str, dict[str, float]] = {}
    toks: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, int]] = {}
    notes = []
    per_n = {str(n): sum(r["n_candidates"] >= n for r in records) for n in ns}
    for n in ns:
        if records and per_n[str(n)] == 0:
            notes.append(
                f"n={n} skipped: no query has {n} candidates (most: {max(r['n_candidates'] for r in records)})"
            )
        elif per_n[str(n)] < len(records):
            notes.append(f"n={n}: {len(records) - per_n[str(n)]} queries with fewer candidates left out")
    for s in strategies:
        if records and all(s not in r["results"] for r in records):
            notes.append(f"{s} skipped: it needs extracted answers (pass --extract choice|math)")
            continue
        for n in ns:
            rs = [r["results"][s][str(n)] for r in records if str(n) in r["results"].get(s, {})]
            ok = [x for x in rs if x.get("correct") is not None]
            if not rs:
                continue
            acc.setdefault(s, {})[str(n)] = float(np.mean([x["correct"] for x in ok])) if ok else float("nan")
            if len(ok) < len(rs):
                errors.setdefault(s, {})[str(n)] = len(rs) - len(ok)
            if any("comparisons" in x for x in ok):
                comps.setdefault(s, {})[str(n)] = float(np.mean([x["comparisons"] for x in ok]))
                toks.setdefault(s, {})[str(n)] = float(np.mean([x["tokens"] for x in ok]))
    return {
        **(meta or {}),
        "queries": len(records),
        "strategies": list(strategies),
        "n": [int(n) for n in ns],
        "queries_per_n": per_n,
        "accuracy": acc,
        "comparisons_per_query": comps,
        "tokens_per_query": toks,
        "errors": errors,
        "notes": notes,
    }


def _fmt(x, pct=True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def bon_markdown(summary: dict) -> str:
    ns = [str(n) for n in summary["n"] if summary["queries_per_n"].get(str(n))]
    if not ns or not summary["accuracy"]:
        return "(no results)\n" + "".join(f"\n- {n}" for n in summary["notes"])
    judge = ("direct" if summary.get("direct") else "thinks first") if summary.get("model") else None
    head = f"Best-of-N accuracy (%) on {summary['queries']} queries" + (
        f"; judge {summary['model']} ({judge}, votes={summary.get('votes')})" if judge else ""
    )
    lines = [head, "", "| strategy | " + " | ".join(f"n={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for s, per in summary["accuracy"].items():
        lines.append(f"| {s} | " + " | ".join(_fmt(per.get(n)) for n in ns) + " |")
    if summary["comparisons_per_query"]:
        lines += [
            "",
            "Judge cost per query (comparisons / generated tokens)",
            "",
            "| strategy | " + " | ".join(f"n={n}" for n in ns) + " |",
            "|---|" + "---|" * len(ns),
        ]
        for s, per in summary["comparisons_per_query"].items():
            tok = summary["tokens_per_query"][s]
            lines.append(
                f"| {s} | " + " | ".join(f"{_fmt(per.get(n), False)} / {_fmt(tok.get(n), False)}" for n in ns) + " |"
            )
    extra = [f"- {n}" for n in summary["notes"]]
    extra += [
        f"- {s}: {sum(per.values())} picks not made (over-long comparisons; see records)"
        for s, per in summary["errors"].items()
    ]
    return "\n".join(lines + ([""] + extra if extra else [])) + "\n"


def plot_bon(summary: dict, path: str | Path) -> Path | None:
    """Accuracy (%) against n, one line per strategy; None when there is nothing to draw."""
    if not summary["accuracy"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    style = {"oracle": {"linestyle": "--", "color": "gray"}, "random": {"linestyle": ":"}}
    for s, per in summary["accuracy"].items():
        pts = sorted((int(n), 100 * a) for n, a in per.items() if not math.isnan(a))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s, **style.get(s, {}))
    ax.set_xscale("log", base=2)
    ticks = sorted({int(n) for per in summary["accuracy"].values() for n in per})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("candidates (n)")
    ax.set_ylabel("accuracy of the pick (%)")
    ax.set_title("best-of-N" + (" (direct judge)" if summary.get("direct") else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_bon_summary(out: str | Path, summary: dict, *, plots: bool = True) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(bon_markdown(summary))
    written = [out / "summary.json", out / "summary.md"]
    if plots and plot_bon(summary, out / "bon.png") is not None:
        written.append(out / "bon.png")
    return written
