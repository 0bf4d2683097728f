"""Summaries of evaluation records: metrics per setting (:func:`summarize`), ``summary.json`` / ``summary.md``
tables and matplotlib plots (accuracy vs votes, vs thinking budget, tokens per comparison)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rrm_jax.data.records import rmbench_cell
from rrm_jax.evaluation import scoring


def summarize(records: Sequence[dict], *, kind: str = "jsonl") -> dict:
    """Metrics of one setting's records (see :mod:`rrm_jax.evaluation.scoring` for the rules)."""
    credits = [r["credit"] for r in records]
    scored = [c for c in credits if c is not None]
    soft = [r["soft"] if r["label"] == 0 else 1.0 - r["soft"] for r in records if r["label"] is not None]
    secs = sum(r.get("seconds", 0.0) for r in records)
    tokens = [r["tokens"] for r in records]
    s: dict[str, Any] = {
        "kind": kind,
        "n": len(records),
        "n_scored": len(scored),
        "accuracy": float(np.mean(scored)) if scored else float("nan"),
        "soft_accuracy": float(np.mean(soft)) if soft else float("nan"),
        "no_verdict": sum(r["winner"] is None for r in records),
        "invalid_samples": sum(r["invalid"] for r in records),
        "samples": sum(r["samples_drawn"] for r in records),
        # adaptive voting: the share of the vote budget (votes x shown orders) that was not drawn
        "samples_saved": 1.0
        - sum(r["samples_drawn"] for r in records)
        / max(1, sum(r.get("votes_requested", 1) * (2 if r.get("swap") == "both" else 1) for r in records)),
        "forced": sum(r["forced"] for r in records),
        "truncated": sum(bool(r["truncated"]) for r in records),
        "tokens_per_comparison": float(np.mean(tokens)) if tokens else 0.0,
        "seconds": secs,
        "comparisons_per_s": len(records) / secs if secs > 0 else float("nan"),
        "tokens_per_s": sum(tokens) / secs if secs > 0 else float("nan"),
    }
    orders = [r.get("orders", []) for r in records]  # each sample's shown order and pick, in the dataset's frame
    picks = [r.get("sample_verdicts", []) for r in records]
    s["position"] = scoring.position_bias(orders, picks, [r["label"] for r in records])
    subsets = scoring.subset_accuracy([r["subset"] for r in records], credits)
    s["subsets"] = subsets
    if kind == "rewardbench":
        s["rewardbench"] = scoring.rewardbench_scores({k: v["accuracy"] for k, v in subsets.items()})
    elif kind == "pandalm":
        s["pandalm"] = scoring.pandalm_metrics([r["label"] for r in records], [r["winner"] for r in records])
    elif kind == "llmbar":
        s["llmbar"] = scoring.llmbar_scores(subsets)
    elif kind == "judgebench":
        s["judgebench"] = scoring.judgebench_scores(
            [r["label"] for r in records], orders, picks, [r["subset"] for r in records]
        )
    elif kind == "rmbench":
        s["rmbench"] = scoring.rmbench_scores(
            [rmbench_cell(r["id"]) for r in records], [r["subset"] for r in records], [r["winner"] for r in records]
        )
    return s


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def position_line(p: dict) -> str:
    """The position-bias figures of one summary as a line (see scoring.position_bias)."""
    line = f"position: {_pct(p['first_rate'])}% of verdicts picked the response shown first"
    if p["accuracy_gold_first"] is not None or p["accuracy_gold_second"] is not None:
        line += f"; accuracy {_pct(p['accuracy_gold_first'])}% / {_pct(p['accuracy_gold_second'])}% with the gold first / second"
    if p["n_both"]:
        line += f"; {_pct(p['consistency'])}% of {p['n_both']} pairs judged both ways agree"
    return line


def _headline(s: dict) -> list[tuple[str, str]]:
    cols = [("acc", _pct(s["accuracy"]))]
    if "rewardbench" in s:
        rb = s["rewardbench"]
        cols += [(sec, _pct(rb["sections"].get(sec))) for sec in scoring.REWARDBENCH_SECTIONS]
        cols += [("overall" + ("" if rb["complete"] else "*"), _pct(rb["overall"]))]
    if "pandalm" in s:
        p = s["pandalm"]
        cols += [
            ("3-cls acc", _pct(p["accuracy"])),
            ("P", _pct(p["precision"])),
            ("R", _pct(p["recall"])),
            ("F1", _pct(p["f1"])),
        ]
    if "judgebench" in s:
        jb = s["judgebench"]
        cols += [("JudgeBench", _pct(jb["overall"]))] + [(g, _pct(v)) for g, v in jb["groups"].items()]
    if "rmbench" in s:
        rm = s["rmbench"]
        cols += [("RM-Bench", _pct(rm["score"]))] + [(d, _pct(v["score"])) for d, v in rm["domains"].items()]
        cols += [(k, _pct(rm[k])) for k in ("hard", "normal", "easy")]
    if "llmbar" in s:
        lb = s["llmbar"]
        cols += [(k.replace("Adversarial_", "Adv-"), _pct(v)) for k, v in lb["subsets"].items()]
        if "adversarial_mean" in lb:
            cols += [("Adv mean", _pct(lb["adversarial_mean"]))]
    return cols


def summary_markdown(summaries: Sequence[dict]) -> str:
    if not summaries:
        return "(no results)\n"
    head = _headline(summaries[0])
    bias = ["first picked", "gold 1st / 2nd", "consistent"]
    names = ["setting", "n"] + [k for k, _ in head] + bias + ["no verdict", "truncated", "tok/cmp", "cmp/s", "tok/s"]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for s in summaries:
        vals = [s["setting"], str(s["n"])] + [v for _, v in _headline(s)]
        p = s.get("position") or {}
        vals += [
            _pct(p.get("first_rate")),
            f"{_pct(p.get('accuracy_gold_first'))} / {_pct(p.get('accuracy_gold_second'))}",
            _pct(p.get("consistency")),
        ]
        vals += [
            str(s["no_verdict"]),
            str(s["truncated"]),
            f"{s['tokens_per_comparison']:.0f}",
            f"{s['comparisons_per_s']:.2f}",
            f"{s['tokens_per_s']:.0f}",
        ]
        lines.append("| " + " | ".join(vals) + " |")
    notes = [
        "",
        "Accuracies in %; pairwise accuracy counts a missing verdict as 0.5. Position: the share of samples that picked "
        "the response shown first, sample accuracy with the gold shown first / second, and the share of items judged "
        "in both orders (swap=both) whose two orders agree.",
    ]
    if any("rewardbench" in s and not s["rewardbench"]["complete"] for s in summaries):
        notes.append("overall*: not all four RewardBench sections were evaluated (mean of those present).")
    if any("pandalm" in s for s in summaries):
        notes.append(
            "PandaLM 3-class metrics: macro over {tie, 1, 2}; a missing verdict matches no class; "
            "'acc' is on the non-tie items."
        )
    probs = [s for s in summaries if s.get("problems") or s.get("notes")]
    if probs:
        notes.append(
            f"Input: {probs[0].get('problems', 0)} bad items skipped, {probs[0].get('notes', 0)} kept "
            "with a note (see problems.json)."
        )
    return "\n".join(lines + notes) + "\n"


def write_summary(
    out_dir: str | Path, summaries: Sequence[dict], *, plots: bool = True, records: dict[str, list[dict]] | None = None
) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(list(summaries), indent=1, default=float))
    (out / "summary.md").write_text(summary_markdown(summaries))
    written = [out / "summary.json", out / "summary.md"]
    if plots:
        written += make_plots(out, summaries, records or {})
    return written


def write_judgebench(out_dir: str | Path, records: dict[str, list[dict]]) -> list[Path]:
    """Each setting's pairs as JudgeBench's runner writes them, ``judgebench-<setting>.jsonl`` of ``{pair_id,
    source, label, judgments}``, so that JudgeBench's own metric code runs on rrm-jax's verdicts unchanged."""
    written = []
    for tag, recs in records.items():
        path = Path(out_dir) / f"judgebench-{tag}.jsonl"
        rows = (
            {
                "pair_id": r["id"],
                "source": r["subset"],
                "label": "A>B" if r["label"] == 0 else "B>A",
                "judgments": scoring.judgebench_judgments(r.get("orders", []), r.get("sample_verdicts", [])),
            }
            for r in recs
        )
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        written.append(path)
    return written


def make_plots(out_dir: Path, summaries: Sequence[dict], records: dict[str, list[dict]]) -> list[Path]:
    """accuracy vs votes (a line per budget), accuracy vs thinking budget (a line per votes; only when
    several budgets ran), and a histogram of tokens per comparison (one per setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def lines(x_key: str, group_key: str, fname: str, xlabel: str, logx: bool):
        groups: dict[Any, list[tuple[float, float]]] = {}
        for s in summaries:
            x = s.get(x_key)
            if x is None and x_key == "max_think_tokens":
                x = s.get("max_new_tokens")  # no budget = thinking may use every new token
            if x is not None and not (logx and x == 0):  # the direct baseline (budget 0) has no place on a log axis
                groups.setdefault(s.get(group_key), []).append((x, s["accuracy"]))
        if not any(len(v) >= 2 for v in groups.values()):
            return
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for g, pts in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            pts.sort()
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=f"{group_key}={g}")
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("pairwise accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=120)
        plt.close(fig)
        written.append(out_dir / fname)

    lines("votes", "max_think_tokens", "accuracy_vs_votes.png", "votes (majority of k samples)", True)
    lines(
        "max_think_tokens", "votes", "accuracy_vs_budget.png", "thinking budget (tokens; none = max_new_tokens)", True
    )
    if records:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        bins = np.histogram_bin_edges([r["tokens"] for recs in records.values() for r in recs], bins=30)
        for tag, recs in records.items():
            ax.hist([r["tokens"] for r in recs], bins=bins, histtype="step", linewidth=1.5, label=tag)
        ax.set_xlabel("generated tokens per comparison")
        ax.set_ylabel("comparisons")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "tokens_per_comparison.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "tokens_per_comparison.png")
    return written
