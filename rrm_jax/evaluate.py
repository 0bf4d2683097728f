"""Evaluation runs: judge a pair dataset in chunks, write one JSONL record per comparison as it goes,
resume interrupted runs, and summarise (Markdown + JSON tables, matplotlib plots).

Records (``records-<setting>.jsonl``, one JSON object a line, flushed and fsynced after every chunk):
``{id, row, subset, label, setting, votes_requested, swap, chunk_seed, credit, seconds}`` plus every
:class:`~rrm_jax.judge.Verdict` field (``winner, votes_a, votes_b, invalid, soft, reasonings, orders,
tokens, samples_drawn, forced, truncated, sample_verdicts``) in the dataset's frame (``a`` = the dataset's
``response_a``). ``credit`` is the pairwise accuracy credit: 1 / 0 / 0.5 for no verdict, null for a tie gold.

Order randomisation (``swap="random"``, the official protocol): row ``i`` is shown as (b, a) when
``show_first_b(seed, i)`` — a seeded coin of (seed, dataset row), so the same rows get the same orders
however the run is chunked or resumed. Each chunk's sampling seed is derived from (seed, its first row).

Resume: an existing records file is read back (a torn last line from a killed write is cut off), its ids
are skipped, and new records are appended; a run's settings are kept in ``run-<setting>.json`` and a
resume with different settings is refused. A lock file stops two processes writing the same records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import scoring
from .distributed import barrier, is_main
from .data.records import DataError, PairRecord
from .progress import Progress

RECORD_VERSION = 1
SWAPS = ("random", "both", "none")


class EvalError(RuntimeError):
    """An evaluation that cannot proceed as asked (settings mismatch, foreign records file, busy lock)."""


# ---------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Setting:
    votes: int = 1
    max_think_tokens: int | None = None

    @property
    def tag(self) -> str:
        return f"v{self.votes}-t{'none' if self.max_think_tokens is None else self.max_think_tokens}"


def _stable_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def show_first_b(seed: int, row: int) -> bool:
    """The per-row order coin; the same function as the Judge's own swap="random" coin."""
    from rrm_jax.judge.judge import show_first_b as coin

    return coin(seed, row)


def to_dataset_frame(v, flipped: bool):
    """A Verdict judged on (b, a) re-expressed for (a, b)."""
    if not flipped:
        return v
    swap = {"ab": "ba", "ba": "ab"}
    return dataclasses.replace(
        v, winner=None if v.winner is None else 1 - v.winner, votes_a=v.votes_b, votes_b=v.votes_a,
        soft=1.0 - v.soft, orders=[swap.get(o, o) for o in v.orders],
        sample_verdicts=[None if s is None else 1 - s for s in getattr(v, "sample_verdicts", [])])


# ---------------------------------------------------------------------------------------------- records file
class RecordsFile:
    """Append-only JSONL of comparison records with crash-safe resume (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self, *, repair: bool = True) -> list[dict]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1        # a write torn by a kill: drop the partial last line
            if repair:
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
            raw = raw[:cut]
        out, seen = [], {}
        for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{self.path}:{n}: corrupt record ({e.msg}); "
                                "move the file away to start over") from None
            if not isinstance(rec, dict) or "id" not in rec:
                raise DataError(f"{self.path}:{n}:id: record without an id")
            if rec["id"] in seen:
                raise DataError(f"{self.path}:{n}:id: duplicate record for id {rec['id']!r} (first at line "
                                f"{seen[rec['id']]}): two runs wrote to this file?")
            seen[rec["id"]] = n
            out.append(rec)
        return out

    def append(self, records: Iterable[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no locking
        yield
        return
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EvalError(f"{path}: another process is writing these records") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_meta(path: Path, meta: dict, have_records: bool) -> None:
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in meta.items() if k in _RESUME_KEYS and old.get(k) != v}
        if diff:
            raise EvalError(f"{path}: this output holds a run with other settings "
                            + ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
                            + "; use another --out or the same settings")
    elif have_records:
        raise EvalError(f"{path} is missing beside existing records; cannot tell their settings")
    barrier("eval-meta-checked")  # multi-host: everyone has read the old meta before the main process rewrites it
    if is_main():
        path.write_text(json.dumps(meta, indent=1))


_RESUME_KEYS = ("dataset", "fingerprint", "model", "votes", "max_think_tokens", "swap", "seed", "adaptive",
                "prompt", "record_version")


# ---------------------------------------------------------------------------------------------- the run
def run_records(judge, items: Sequence[PairRecord], records_path: str | Path, *, meta: dict, votes: int = 1,
                swap: str = "random", seed: int = 0, batch_size: int = 64, adaptive: bool = False,
                progress: bool = True, description: str = "judging") -> list[dict]:
    """Judge every item not yet in ``records_path`` (chunks of ``batch_size`` through
    ``judge.compare_many``) and return the records of ``items`` in item order."""
    if swap not in SWAPS:
        raise ValueError(f"swap must be one of {SWAPS}, got {swap!r}")
    if votes < 1 or batch_size < 1:
        raise ValueError(f"votes and batch_size must be >= 1 (got {votes}, {batch_size})")
    path = Path(records_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len({r.id for r in items}) != len(items):
        raise DataError("items have duplicate ids")
    rf = RecordsFile(path)
    meta = {**meta, "votes": votes, "swap": swap, "seed": seed, "adaptive": adaptive,
            "record_version": RECORD_VERSION}
    # multi-host: every process judges every chunk (the sampler's collectives need all of them) and
    # reads the same records to resume; the main process alone locks, repairs and appends
    main = is_main()
    with _lock(path.with_name(path.name + ".lock")) if main else contextlib.nullcontext():
        done = {r["id"]: r for r in rf.load(repair=main)}
        _check_meta(path.with_name(path.stem + ".meta.json"), meta, bool(done))
        todo = [(i, r) for i, r in enumerate(items) if r.id not in done]
        t0, tokens = time.perf_counter(), 0
        with Progress(description, len(items), completed=len(items) - len(todo), rate="cmp", fmt="{tok_s:.0f} tok/s",
                      enabled=progress and main) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                new = _judge_chunk(judge, chunk, meta, votes, swap, seed, adaptive)
                if main:
                    rf.append(new)
                done.update((r["id"], r) for r in new)
                tokens += sum(r["tokens"] for r in new)
                bar.update(advance=len(new), tok_s=tokens / (time.perf_counter() - t0))
    return [done[r.id] for r in items]


def _judge_chunk(judge, chunk, meta, votes, swap, seed, adaptive) -> list[dict]:
    chunk_seed = _stable_seed(seed, chunk[0][0], 0xE7A1)
    flips = [swap == "random" and show_first_b(seed, i) for i, _ in chunk]
    pairs = [(r.query, r.response_b, r.response_a) if f else (r.query, r.response_a, r.response_b)
             for (_, r), f in zip(chunk, flips)]
    t0 = time.perf_counter()
    verdicts = judge.compare_many(pairs, votes=votes, swap="none" if swap == "random" else swap,
                                  seed=chunk_seed, adaptive=adaptive)
    dt = time.perf_counter() - t0
    if len(verdicts) != len(pairs):
        raise EvalError(f"judge returned {len(verdicts)} verdicts for {len(pairs)} pairs")
    out = []
    for (row, r), f, v in zip(chunk, flips, verdicts):
        v = to_dataset_frame(v, f)
        rec = {"id": r.id, "row": row, "subset": r.subset, "label": r.label, "setting": meta.get("setting"),
               "votes_requested": votes, "swap": swap, "chunk_seed": chunk_seed}
        rec.update(v.to_dict())
        rec["credit"] = scoring.credit(r.label, v.winner)
        rec["seconds"] = dt / len(chunk)
        out.append(rec)
    return out


def evaluate(judge, dataset, out_dir: str | Path, *, votes: int = 1, swap: str = "random", seed: int = 0,
             max_items: int | None = None, batch_size: int = 64, adaptive: bool = False, kind: str | None = None,
             setting: Setting | None = None, progress: bool = True, extra_meta: dict | None = None) -> dict:
    """Judge ``dataset`` (a :class:`~rrm_jax.data.Pairs`, grain MapDataset or sequence of PairRecord) and
    return this setting's summary; records go to ``out_dir/records-<setting>.jsonl``.

    ``kind`` picks the benchmark scoring ("rewardbench" | "pandalm" | "llmbar" | "jsonl"; default: the
    dataset's own). ``setting`` defaults to (votes, the judge's sampling.max_think_tokens)."""
    kind = kind or getattr(dataset, "kind", None) or "jsonl"
    n = len(dataset)
    n = n if max_items is None or max_items <= 0 else min(n, max_items)
    items = [dataset[i] for i in range(n)]
    if setting is None:
        setting = Setting(votes, getattr(getattr(judge, "sampling", None), "max_think_tokens", None))
    elif setting.votes != votes:
        raise ValueError(f"setting.votes={setting.votes} but votes={votes}")
    out = Path(out_dir)
    prompt = getattr(getattr(judge, "prompt", None), "key", None)
    meta = {"dataset": kind, "source": getattr(dataset, "source", None),
            "fingerprint": getattr(dataset, "fingerprint", None), "setting": setting.tag,
            "max_think_tokens": setting.max_think_tokens, "prompt": prompt, **(extra_meta or {})}
    records = run_records(judge, items, out / f"records-{setting.tag}.jsonl", meta=meta, votes=votes, swap=swap,
                          seed=seed, batch_size=batch_size, adaptive=adaptive, progress=progress,
                          description=f"{kind} {setting.tag}")
    summary = summarize(records, kind=kind)
    summary.update(setting=setting.tag, votes=setting.votes, max_think_tokens=setting.max_think_tokens,
                   max_new_tokens=getattr(getattr(judge, "sampling", None), "max_new_tokens", None),
                   problems=len(getattr(dataset, "problems", None) or []),
                   notes=len(getattr(dataset, "notes", None) or []))
    return summary


# ---------------------------------------------------------------------------------------------- summaries
def summarize(records: Sequence[dict], *, kind: str = "jsonl") -> dict:
    """Metrics of one setting's records (see :mod:`rrm_jax.scoring` for the rules)."""
    credits = [r["credit"] for r in records]
    scored = [c for c in credits if c is not None]
    soft = [r["soft"] if r["label"] == 0 else 1.0 - r["soft"] for r in records if r["label"] is not None]
    secs = sum(r.get("seconds", 0.0) for r in records)
    tokens = [r["tokens"] for r in records]
    s: dict[str, Any] = {
        "kind": kind, "n": len(records), "n_scored": len(scored),
        "accuracy": float(np.mean(scored)) if scored else float("nan"),
        "soft_accuracy": float(np.mean(soft)) if soft else float("nan"),
        "no_verdict": sum(r["winner"] is None for r in records),
        "invalid_samples": sum(r["invalid"] for r in records),
        "samples": sum(r["samples_drawn"] for r in records),
        # adaptive voting: the share of the vote budget (votes x shown orders) that was not drawn
        "samples_saved": 1.0 - sum(r["samples_drawn"] for r in records)
        / max(1, sum(r.get("votes_requested", 1) * (2 if r.get("swap") == "both" else 1) for r in records)),
        "forced": sum(r["forced"] for r in records),
        "truncated": sum(bool(r["truncated"]) for r in records),
        "tokens_per_comparison": float(np.mean(tokens)) if tokens else 0.0,
        "seconds": secs,
        "comparisons_per_s": len(records) / secs if secs > 0 else float("nan"),
        "tokens_per_s": sum(tokens) / secs if secs > 0 else float("nan"),
    }
    subsets = scoring.subset_accuracy([r["subset"] for r in records], credits)
    s["subsets"] = subsets
    if kind == "rewardbench":
        s["rewardbench"] = scoring.rewardbench_scores({k: v["accuracy"] for k, v in subsets.items()})
    elif kind == "pandalm":
        s["pandalm"] = scoring.pandalm_metrics([r["label"] for r in records], [r["winner"] for r in records])
    elif kind == "llmbar":
        s["llmbar"] = scoring.llmbar_scores(subsets)
    return s


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _headline(s: dict) -> list[tuple[str, str]]:
    cols = [("acc", _pct(s["accuracy"]))]
    if "rewardbench" in s:
        rb = s["rewardbench"]
        cols += [(sec, _pct(rb["sections"].get(sec))) for sec in scoring.REWARDBENCH_SECTIONS]
        cols += [("overall" + ("" if rb["complete"] else "*"), _pct(rb["overall"]))]
    if "pandalm" in s:
        p = s["pandalm"]
        cols += [("3-cls acc", _pct(p["accuracy"])), ("P", _pct(p["precision"])), ("R", _pct(p["recall"])),
                 ("F1", _pct(p["f1"]))]
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
    names = ["setting", "n"] + [k for k, _ in head] + ["no verdict", "truncated", "tok/cmp", "cmp/s", "tok/s"]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for s in summaries:
        vals = [s["setting"], str(s["n"])] + [v for _, v in _headline(s)]
        vals += [str(s["no_verdict"]), str(s["truncated"]), f"{s['tokens_per_comparison']:.0f}",
                 f"{s['comparisons_per_s']:.2f}", f"{s['tokens_per_s']:.0f}"]
        lines.append("| " + " | ".join(vals) + " |")
    notes = ["", "Accuracies in %; pairwise accuracy counts a missing verdict as 0.5."]
    if any("rewardbench" in s and not s["rewardbench"]["complete"] for s in summaries):
        notes.append("overall*: not all four RewardBench sections were evaluated (mean of those present).")
    if any("pandalm" in s for s in summaries):
        notes.append("PandaLM 3-class metrics: macro over {tie, 1, 2}; a missing verdict matches no class; "
                     "'acc' is on the non-tie items.")
    probs = [s for s in summaries if s.get("problems") or s.get("notes")]
    if probs:
        notes.append(f"Input: {probs[0].get('problems', 0)} bad items skipped, {probs[0].get('notes', 0)} kept "
                     "with a note (see problems.json).")
    return "\n".join(lines + notes) + "\n"


def write_summary(out_dir: str | Path, summaries: Sequence[dict], *, plots: bool = True,
                  records: dict[str, list[dict]] | None = None) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(list(summaries), indent=1, default=float))
    (out / "summary.md").write_text(summary_markdown(summaries))
    written = [out / "summary.json", out / "summary.md"]
    if plots:
        written += make_plots(out, summaries, records or {})
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
                x = s.get("max_new_tokens")     # no budget = thinking may use every new token
            if x is not None:
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
    lines("max_think_tokens", "votes", "accuracy_vs_budget.png", "thinking budget (tokens; none = max_new_tokens)",
          True)
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


def load_records(out_dir: str | Path) -> dict[str, list[dict]]:
    """{setting tag: records} for every records file in ``out_dir`` (read-only; no repair)."""
    return {p.stem.removeprefix("records-"): RecordsFile(p).load(repair=False)
            for p in sorted(Path(out_dir).glob("records-*.jsonl"))}


# ---------------------------------------------------------------------------------------------- CLIs
def eval_cli(argv: list[str]) -> int:
    from .eval_cli import eval_main

    return eval_main(argv)


def judge_cli(argv: list[str]) -> int:
    from .eval_cli import judge_main

    return judge_main(argv)


def rank_cli(argv: list[str]) -> int:
    from .eval_cli import rank_main

    return rank_main(argv)
