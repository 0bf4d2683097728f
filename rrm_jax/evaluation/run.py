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
resume with different settings or data is refused (``restart`` moves the old records aside instead). A lock
file stops two processes writing the same records. An item whose prompt cannot fit the model's context gets
an error record (``error``, no verdict) and the run goes on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from rrm_jax.core.distributed import is_main
from rrm_jax.core.progress import Progress
from rrm_jax.core.seeds import derive_seed, show_first_b
from rrm_jax.data.records import DataError, PairRecord
from rrm_jax.evaluation import scoring
from rrm_jax.evaluation.fit import NO_VERDICT, misfit
from rrm_jax.evaluation.records import RECORD_VERSION, EvalError, open_records
from rrm_jax.evaluation.report import summarize
from rrm_jax.judge.judge import SWAPS


# ---------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Setting:
    votes: int = 1
    max_think_tokens: int | None = None

    @property
    def tag(self) -> str:
        if self.max_think_tokens == 0:  # the direct baseline (DirectJudge)
            return f"v{self.votes}-direct"
        return f"v{self.votes}-t{'none' if self.max_think_tokens is None else self.max_think_tokens}"


def to_dataset_frame(v, flipped: bool):
    """A Verdict judged on (b, a) re-expressed for (a, b)."""
    if not flipped:
        return v
    swap = {"ab": "ba", "ba": "ab"}
    return dataclasses.replace(
        v,
        winner=None if v.winner is None else 1 - v.winner,
        votes_a=v.votes_b,
        votes_b=v.votes_a,
        soft=1.0 - v.soft,
        orders=[swap.get(o, o) for o in v.orders],
        sample_verdicts=[None if s is None else 1 - s for s in getattr(v, "sample_verdicts", [])],
    )


# ---------------------------------------------------------------------------------------------- the run
def run_meta(meta: dict, votes: int, swap: str, seed: int, adaptive: bool) -> dict:
    """A records file's meta: the command's (data, judge identity, prompt, budget) and the run's own keys."""
    return {**meta, "votes": votes, "swap": swap, "seed": seed, "adaptive": adaptive, "record_version": RECORD_VERSION}


def run_records(
    judge,
    items: Sequence[PairRecord],
    records_path: str | Path,
    *,
    meta: dict,
    votes: int = 1,
    swap: str = "random",
    seed: int = 0,
    batch_size: int = 64,
    adaptive: bool = False,
    progress: bool = True,
    description: str = "judging",
    restart: bool = False,
) -> list[dict]:
    """Judge every item not yet in ``records_path`` (chunks of ``batch_size`` through
    ``judge.compare_many``) and return the records of ``items`` in item order. ``restart`` moves earlier
    records aside instead of resuming them; an item whose prompt cannot fit the model's context gets an
    error record (see :func:`rrm_jax.evaluation.fit.misfit`) and the run goes on."""
    if swap not in SWAPS:
        raise ValueError(f"swap must be one of {SWAPS}, got {swap!r}")
    if votes < 1 or batch_size < 1:
        raise ValueError(f"votes and batch_size must be >= 1 (got {votes}, {batch_size})")
    path = Path(records_path)
    if len({r.id for r in items}) != len(items):
        raise DataError("items have duplicate ids")
    meta = run_meta(meta, votes, swap, seed, adaptive)
    # multi-host: every process judges every chunk (the sampler's collectives need all of them) and
    # reads the same records to resume; the main process alone locks, repairs and appends
    main = is_main()
    with open_records(path, meta, restart=restart) as (rf, done):
        # items recorded with an error (e.g. too long) are tried again: the new record replaces the error
        todo = [(i, r) for i, r in enumerate(items) if r.id not in done or done[r.id].get("error")]
        t0, tokens = time.perf_counter(), 0
        with Progress(
            description,
            len(items),
            completed=len(items) - len(todo),
            rate="cmp",
            fmt="{tok_s:.0f} tok/s",
            enabled=progress and main,
        ) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                new = _judge_chunk(judge, chunk, meta, votes, swap, seed, adaptive)
                if main:
                    rf.append(new)
                done.update((r["id"], r) for r in new)
                tokens += sum(r["tokens"] for r in new)
                bar.update(advance=len(new), tok_s=tokens / (time.perf_counter() - t0))
    return [done[r.id] for r in items]


def _judge_chunk(judge, chunk, meta, votes, swap, seed, adaptive) -> list[dict]:
    # the seed stays the one of the whole chunk, so skipping an over-long item changes no other item's draws
    chunk_seed = derive_seed(seed, chunk[0][0], 0xE7A1)
    flips = [swap == "random" and show_first_b(seed, i) for i, _ in chunk]
    pairs = [
        (r.query, r.response_b, r.response_a) if f else (r.query, r.response_a, r.response_b)
        for (_, r), f in zip(chunk, flips)
    ]
    errors = [misfit(judge, r.id, *pair) for (_, r), pair in zip(chunk, pairs)]
    ok = [k for k, e in enumerate(errors) if e is None]
    t0 = time.perf_counter()
    verdicts = (
        judge.compare_many(
            [pairs[k] for k in ok],
            votes=votes,
            swap="none" if swap == "random" else swap,
            seed=chunk_seed,
            adaptive=adaptive,
        )
        if ok
        else []
    )
    dt = time.perf_counter() - t0
    if len(verdicts) != len(ok):
        raise EvalError(f"judge returned {len(verdicts)} verdicts for {len(ok)} pairs")
    by_item = dict(zip(ok, verdicts))
    out = []
    for k, ((row, r), f) in enumerate(zip(chunk, flips)):
        v = to_dataset_frame(by_item[k], f) if k in by_item else NO_VERDICT
        rec = {
            "id": r.id,
            "row": row,
            "subset": r.subset,
            "label": r.label,
            "setting": meta.get("setting"),
            "votes_requested": votes,
            "swap": swap,
            "chunk_seed": chunk_seed,
        }
        rec.update(v.to_dict())
        rec["credit"] = scoring.credit(r.label, v.winner)
        rec["seconds"] = dt / len(ok) if k in by_item else 0.0
        if errors[k] is not None:
            rec["error"] = errors[k]
        out.append(rec)
    return out


def eval_meta(dataset, kind: str, setting: Setting, prompt: str | None, extra_meta: dict | None = None) -> dict:
    """The meta of one setting's records in :func:`evaluate` (before :func:`run_meta`'s run keys)."""
    return {
        "dataset": kind,
        "source": getattr(dataset, "source", None),
        "fingerprint": getattr(dataset, "fingerprint", None),
        "setting": setting.tag,
        "max_think_tokens": setting.max_think_tokens,
        "prompt": prompt,
        **(extra_meta or {}),
    }


def records_path(out_dir: str | Path, setting: Setting) -> Path:
    return Path(out_dir) / f"records-{setting.tag}.jsonl"


def evaluate(
    judge,
    dataset,
    out_dir: str | Path,
    *,
    votes: int = 1,
    swap: str = "random",
    seed: int = 0,
    max_items: int | None = None,
    batch_size: int = 64,
    adaptive: bool = False,
    kind: str | None = None,
    setting: Setting | None = None,
    progress: bool = True,
    extra_meta: dict | None = None,
    restart: bool = False,
) -> dict:
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
    meta = eval_meta(dataset, kind, setting, getattr(getattr(judge, "prompt", None), "key", None), extra_meta)
    records = run_records(
        judge,
        items,
        records_path(out, setting),
        meta=meta,
        votes=votes,
        swap=swap,
        seed=seed,
        batch_size=batch_size,
        adaptive=adaptive,
        progress=progress,
        description=f"{kind} {setting.tag}",
        restart=restart,
    )
    summary = summarize(records, kind=kind)
    summary.update(
        setting=setting.tag,
        votes=setting.votes,
        max_think_tokens=setting.max_think_tokens,
        direct=setting.max_think_tokens == 0,
        max_new_tokens=getattr(getattr(judge, "sampling", None), "max_new_tokens", None),
        problems=len(getattr(dataset, "problems", None) or []),
        notes=len(getattr(dataset, "notes", None) or []),
        errors=sum(bool(r.get("error")) for r in records),
    )  # items not judged (too long)
    return summary
