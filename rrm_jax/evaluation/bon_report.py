"""Best-of-N summaries: ``summary.json`` (accuracy per strategy and n, judge comparisons and tokens per query),
``summary.md`` (the same as tables) and ``bon.png`` (accuracy against n, one line per strategy, log2 x axis).

An n is scored on the queries with at least n candidates (n = 0: all of each query's); a judge pick that could
not be made (an over-long comparison, recorded with an ``error``) is left out of that strategy's accuracy and
counted under ``errors``. RewardBench 2 rows add ``rewardbench2``: per strategy, its official subset, Ties and
overall scores over the candidates' tournament scores (a random pick scores 1 for its pick, 0 for the rest).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rrm_jax.evaluation.bon import n_key
from rrm_jax.evaluation.scoring import rewardbench2_scores

RB2_STRATEGIES = ("knockout", "elo", "random")


def summarize_bon(
    records: Sequence[dict], *, strategies: Sequence[str], ns: Sequence[int], meta: dict | None = None
) -> dict:
    """``{"accuracy": {strategy: {n: acc}}, "comparisons_per_query": ..., "tokens_per_query": ..., ...}``."""
    acc: dict[str, dict[str, float]] = {}
    comps: dict[str, dict[str, float]] = {}
    toks: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, int]] = {}
    notes = []
    per_n = {n_key(n): sum(r["n_candidates"] >= n for r in records) for n in ns}
    for n in ns:
        if records and per_n[n_key(n)] == 0:
            notes.append(
                f"n={n} skipped: no query has {n} candidates (most: {max(r['n_candidates'] for r in records)})"
            )
        elif per_n[n_key(n)] < len(records):
            notes.append(f"n={n}: {len(records) - per_n[n_key(n)]} queries with fewer candidates left out")
    for s in strategies:
        if records and all(s not in r["results"] for r in records):
            notes.append(f"{s} skipped: it needs extracted answers (pass --extract choice|math)")
            continue
        for n in map(n_key, ns):
            rs = [r["results"][s][n] for r in records if n in r["results"].get(s, {})]
            ok = [x for x in rs if x.get("correct") is not None]
            if not rs:
                continue
            acc.setdefault(s, {})[n] = float(np.mean([x["correct"] for x in ok])) if ok else float("nan")
            if len(ok) < len(rs):
                errors.setdefault(s, {})[n] = len(rs) - len(ok)
            if any("comparisons" in x for x in ok):
                comps.setdefault(s, {})[n] = float(np.mean([x["comparisons"] for x in ok]))
                toks.setdefault(s, {})[n] = float(np.mean([x["tokens"] for x in ok]))
    rb2 = {s: rewardbench2_scores(_rb2_rows(records, s)) for s in RB2_STRATEGIES if s in acc and 0 in ns}
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
        **({"rewardbench2": rb2} if any(r.get("rb2") for r in records) else {}),
    }


def _rb2_rows(records: Sequence[dict], strategy: str) -> list[dict]:
    """RewardBench 2's scoring rows of one strategy's all-candidates results (scores None where not judged)."""
    rows = []
    for r in records:
        if not r.get("rb2") or "all" not in r["results"].get(strategy, {}):
            continue
        x = r["results"][strategy]["all"]
        if strategy == "random":
            scores = [float(i == x["pick"]) for i in range(r["n_candidates"])]
        else:
            scores = x.get("scores")
        rows.append({**r["rb2"], "scores": scores, "num_correct": sum(r["correct"])})
    return rows


def _fmt(x, pct=True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def bon_markdown(summary: dict) -> str:
    ns = [n_key(n) for n in summary["n"] if summary["queries_per_n"].get(n_key(n))]
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
    if summary.get("rewardbench2"):
        lines += ["", *rb2_markdown(summary["rewardbench2"])]
    extra = [f"- {n}" for n in summary["notes"]]
    extra += [
        f"- {s}: {sum(per.values())} picks not made (over-long comparisons; see records)"
        for s, per in summary["errors"].items()
    ]
    return "\n".join(lines + ([""] + extra if extra else [])) + "\n"


def _rb2_columns(rb2: dict) -> list[str]:
    """The subsets scored under any strategy, in the order rewardbench2_scores gives them (the official, then
    any other)."""
    return list(dict.fromkeys(x for v in rb2.values() for x in v["subsets"]))


def rb2_markdown(rb2: dict) -> list[str]:
    """RewardBench 2's table: a row per strategy, its subsets and the score (the official rules)."""
    subs = _rb2_columns(rb2)
    lines = [
        "RewardBench 2 (%, its official rules over each strategy's candidate scores)",
        "",
        "| strategy | " + " | ".join(subs) + " | score |",
        "|---|" + "---|" * (len(subs) + 1),
    ]
    for s, v in rb2.items():
        lines.append(f"| {s} | " + " | ".join(_fmt(v["subsets"].get(x)) for x in subs) + f" | {_fmt(v['score'])} |")
    some = next(iter(rb2.values()), None)
    if some is not None and not some["complete"]:
        lines += ["", "- not every subset was scored: the score is the mean of those present, not the leaderboard's"]
    return lines


def plot_bon(summary: dict, path: str | Path) -> Path | None:
    """Accuracy (%) against n, one line per strategy; None when there is nothing to draw."""
    if not any(n != "all" for per in summary["accuracy"].values() for n in per):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    style = {"oracle": {"linestyle": "--", "color": "gray"}, "random": {"linestyle": ":"}}
    for s, per in summary["accuracy"].items():
        pts = sorted((int(n), 100 * a) for n, a in per.items() if n != "all" and not math.isnan(a))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s, **style.get(s, {}))
    ax.set_xscale("log", base=2)
    ticks = sorted({int(n) for per in summary["accuracy"].values() for n in per if n != "all"})
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


def plot_rb2(rb2: dict, path: str | Path) -> Path:
    """RewardBench 2's subsets and score as grouped bars, one colour per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subs = _rb2_columns(rb2) + ["score"]
    fig, ax = plt.subplots(figsize=(1.1 * len(subs) + 2, 3.5))
    width = 0.8 / max(1, len(rb2))
    for k, (s, v) in enumerate(rb2.items()):
        vals = [100 * (v["score"] if x == "score" else v["subsets"].get(x, float("nan"))) for x in subs]
        ax.bar(np.arange(len(subs)) + (k - (len(rb2) - 1) / 2) * width, vals, width, label=s)
    ax.set_xticks(np.arange(len(subs)), subs, fontsize=8)
    ax.set_ylabel("score (%)")
    ax.set_title("RewardBench 2", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
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
    if plots and summary.get("rewardbench2"):
        written.append(plot_rb2(summary["rewardbench2"], out / "rewardbench2.png"))
    return written
