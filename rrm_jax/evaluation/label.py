"""`rrm-jax label DATA --model JUDGE --out PAIRS.jsonl`: judge-labelled preference pairs for DPO.

For every query of DATA (JSONL ``{query, candidates: [>= 2 strings], [id]}``) the judge compares each pair of
candidates ``i < j`` in both orders (``swap="both"``), ``votes`` samples per order; the pairs of a chunk of queries
go through one ``compare_many`` call. The majority winner becomes ``chosen`` (a tied vote goes to the side the soft
score favours; a pair with no valid vote is undecided). ``confidence = |2 soft - 1|`` where ``soft`` is the judge's
P(i better) averaged over the samples (from the verdict-digit probabilities, or each sample's vote where those are
unavailable). Output lines ``{query, chosen, rejected, confidence, votes_chosen, votes_rejected, id, pair}`` feed
``mode = "dpo"`` directly; ``--min-confidence`` keeps only the pairs at least that confident (the rest are counted).

Resume: every judged query is one record (all its comparisons, kept or not) in ``PAIRS.records.jsonl``, appended
and fsynced per chunk through :func:`~rrm_jax.evaluation.records.open_records` (lock, torn-line repair, a refusal
to mix other data or settings). A rerun skips the queries recorded there, and ``PAIRS.jsonl`` is rewritten from the
records at the start and the end, so it never holds a pair twice. Because the records keep every comparison, a
rerun with another ``--min-confidence`` refilters without judging again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rrm_jax.core.distributed import initialize, is_main
from rrm_jax.core.errors import ConfigError
from rrm_jax.core.progress import Progress
from rrm_jax.core.seeds import derive_seed
from rrm_jax.data.records import DataError, read_queries
from rrm_jax.evaluation.config import JudgeOptions, build_config, validate
from rrm_jax.evaluation.fit import misfit
from rrm_jax.evaluation.records import (
    RECORD_VERSION,
    EvalError,
    fingerprint_file,
    judge_identity,
    move_aside,
    open_records,
    preflight,
)
from rrm_jax.judge.prompt import get_prompt


@dataclasses.dataclass(frozen=True)
class LabelConfig(JudgeOptions):
    queries: str = ""  # JSONL of {query, candidates: [...], [id]} (the positional DATA)
    out: str = "pairs.jsonl"
    votes: int = 3  # samples per shown order (both orders: 2 x votes per pair)
    min_confidence: float = 0.0
    max_think_tokens: int | None = None
    batch_size: int = 64
    restart: bool = False


def records_path(out: str | Path) -> Path:
    """Where the judged queries of ``out`` are kept: ``pairs.jsonl`` -> ``pairs.records.jsonl``; another suffix
    keeps its whole name (``pairs.json.records.jsonl``), so no two outputs share one."""
    out = Path(out)
    return out.with_name((out.stem if out.suffix == ".jsonl" else out.name) + ".records.jsonl")


def check_output(out: Path, source: str | Path | None, *, restart: bool, command: str = "rrm-jax label") -> None:
    """Refuse an ``out`` that is the input, or an existing file that ``command`` did not write (its records would
    be beside it): writing the pairs would replace it. ``restart`` moves an earlier output aside, never deletes."""
    if source is not None and out.exists() and Path(source).exists() and out.samefile(source):
        raise EvalError(f"--out {out}: is the input DATA; write the pairs to another file")
    if out.is_dir():
        raise EvalError(f"--out {out}: is a directory; name a file for the pairs")
    if out.exists() and not restart and not records_path(out).exists():
        raise EvalError(
            f"--out {out}: exists and was not written by {command} (no {records_path(out).name} beside it); "
            "choose another --out, or pass --restart to move it aside"
        )


# ---------------------------------------------------------------------------------------------- labels
def label_comparison(verdict) -> dict:
    """One comparison of candidates (i, j) as stored: ``winner`` 0 -> i, 1 -> j, None -> undecided."""
    va, vb = int(verdict.votes_a), int(verdict.votes_b)
    soft = getattr(verdict, "soft", None)
    if soft is None:  # a judge without soft scores: the vote share stands in for P(i better)
        soft = va / (va + vb) if va + vb else 0.5
    winner = verdict.winner
    if winner is None and va + vb and soft != 0.5:  # a tied vote (e.g. one per order): the soft score decides
        winner = 0 if soft > 0.5 else 1
    return {
        "winner": winner,
        "votes_i": va,
        "votes_j": vb,
        "soft": float(soft),
        "confidence": abs(2 * float(soft) - 1),
        "invalid": int(verdict.invalid),
        "tokens": int(verdict.tokens),
        "truncated": bool(verdict.truncated),
    }


def pairs_of(record: dict) -> list[dict]:
    """The output pairs of one query record (every decided comparison; the confidence filter comes later)."""
    out = []
    for c in record["comparisons"]:
        if c.get("winner") is None:
            continue
        w, l = (c["i"], c["j"]) if c["winner"] == 0 else (c["j"], c["i"])
        vw, vl = (c["votes_i"], c["votes_j"]) if c["winner"] == 0 else (c["votes_j"], c["votes_i"])
        cands = record["candidates"]
        out.append(
            {
                "query": record["query"],
                "chosen": cands[w],
                "rejected": cands[l],
                "confidence": c["confidence"],
                "votes_chosen": vw,
                "votes_rejected": vl,
                "id": record["id"],
                "pair": [w, l],
            }
        )
    return out


def tally(records: Sequence[dict], min_confidence: float) -> dict:
    """Counts over judged queries: comparisons, kept pairs, and the reasons for the others."""
    comps = [c for r in records for c in r["comparisons"]]
    decided = [c for c in comps if c.get("winner") is not None]
    kept = sum(c["confidence"] >= min_confidence for c in decided)
    return {
        "queries": len(records),
        "comparisons": len(comps),
        "kept": kept,
        "dropped_low_confidence": len(decided) - kept,
        "undecided": sum(c.get("winner") is None and not c.get("error") for c in comps),
        "not_judged": sum(bool(c.get("error")) for c in comps),
        "judge_tokens": sum(c.get("tokens", 0) for c in comps),
    }


def _kept(records: Sequence[dict], min_confidence: float) -> list[dict]:
    return [p for r in records for p in pairs_of(r) if p["confidence"] >= min_confidence]


def write_pairs(path: Path, records: Sequence[dict], min_confidence: float) -> None:
    """``path`` rewritten from ``records`` (written beside it, then renamed over it: never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in _kept(records, min_confidence):
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- the run
def _chunks(todo: list[tuple[int, dict]], batch_size: int):
    """Whole queries per chunk, about ``batch_size`` comparisons each (a query with more is a chunk of its own)."""
    chunk, n = [], 0
    for row, q in todo:
        k = len(q["candidates"]) * (len(q["candidates"]) - 1) // 2
        if chunk and n + k > batch_size:
            yield chunk
            chunk, n = [], 0
        chunk.append((row, q))
        n += k
    if chunk:
        yield chunk


def _judge_chunk(judge, chunk, votes: int, seed: int) -> list[dict]:
    chunk_seed = derive_seed(seed, chunk[0][0], 0x1ABE1)
    slots, pairs = [], []
    records = []
    for row, q in chunk:
        comps = []
        c = q["candidates"]
        for i in range(len(c)):
            for j in range(i + 1, len(c)):
                comp = {"i": i, "j": j, "winner": None}
                error = misfit(judge, f"{q['id']}:{i}-{j}", q["query"], c[i], c[j])
                if error is None:
                    slots.append(comp)
                    pairs.append((q["query"], c[i], c[j]))
                else:
                    comp["error"] = error
                comps.append(comp)
        rec = {
            "id": q["id"],
            "row": row,
            "query": q["query"],
            "candidates": c,
            "votes": votes,
            "chunk_seed": chunk_seed,
            "comparisons": comps,
        }
        errors = [x["error"] for x in comps if x.get("error")]
        if errors:  # like eval's too-long items: a rerun (e.g. with --max-prompt-tokens) tries this query again
            rec["error"] = errors[0]
        records.append(rec)
    verdicts = judge.compare_many(pairs, votes=votes, swap="both", seed=chunk_seed) if pairs else []
    if len(verdicts) != len(pairs):
        raise EvalError(f"judge returned {len(verdicts)} verdicts for {len(pairs)} pairs")
    for comp, v in zip(slots, verdicts):
        comp.update(label_comparison(v))
    return records


def label_meta(meta: dict, votes: int, seed: int) -> dict:
    """The records' meta of a label run: the command's and the run's own keys (both orders always)."""
    return {**meta, "dataset": "label", "votes": votes, "swap": "both", "seed": seed, "record_version": RECORD_VERSION}


def label(
    judge,
    queries: list[dict],
    out: str | Path,
    *,
    meta: dict,
    votes: int = 3,
    seed: int = 0,
    min_confidence: float = 0.0,
    batch_size: int = 64,
    progress: bool = True,
    restart: bool = False,
) -> dict:
    """Label ``queries`` (dicts of :func:`~rrm_jax.data.records.read_queries`) into ``out``; returns the tally."""
    out = Path(out)
    check_output(out, meta.get("source"), restart=restart)
    meta = label_meta(meta, votes, seed)
    main = is_main()
    with open_records(records_path(out), meta, restart=restart) as (rf, done):
        if restart and main:
            move_aside(out)
        if main:
            write_pairs(out, [done[q["id"]] for q in queries if q["id"] in done], min_confidence)
        todo = [(row, q) for row, q in enumerate(queries) if q["id"] not in done or done[q["id"]].get("error")]
        kept = len(_kept([done[q["id"]] for q in queries if q["id"] in done], min_confidence))
        with Progress(
            "labelling",
            len(queries),
            completed=len(queries) - len(todo),
            rate="queries",
            fmt="{kept} pairs kept",
            enabled=progress and main,
        ) as bar:
            for chunk in _chunks(todo, batch_size):
                new = _judge_chunk(judge, chunk, votes, seed)
                if main:
                    rf.append(new)
                    with open(out, "a", encoding="utf-8") as f:  # visible as it goes; the final rewrite orders it
                        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in _kept(new, min_confidence))
                done.update((r["id"], r) for r in new)
                kept += len(_kept(new, min_confidence))
                bar.update(advance=len(new), kept=kept)
        records = [done[q["id"]] for q in queries]
        if main:
            write_pairs(out, records, min_confidence)
    return tally(records, min_confidence)


# ---------------------------------------------------------------------------------------------- command
def _positional_data(argv: list[str]) -> list[str]:
    """``label DATA ...``: the first bare argument that is neither a recipe nor key=value becomes --queries."""
    out, i, found = [], 0, False
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):
            take = 1 if "=" in a or a in ("-h", "--help") else 2
            out += argv[i : i + take]
            i += take
            continue
        if not found and "=" not in a and not a.endswith(".toml"):
            out += ["--queries", a]
            found = True
        else:
            out.append(a)
        i += 1
    return out


def label_main(argv: list[str], *, judge=None) -> int:
    """`rrm-jax label DATA --model JUDGE --out PAIRS.jsonl [--votes 3] [--min-confidence 0.0] [--seed S]`."""
    cfg = build_config(
        LabelConfig,
        _positional_data(argv),
        "rrm-jax label",
        'judge-labelled preference pairs {query, chosen, rejected} for DPO (mode = "dpo")',
    )
    validate(cfg)
    if not cfg.queries:
        raise ConfigError("DATA is required: a JSONL of {query, candidates: [>= 2 strings], [id]}")
    if not 0 <= cfg.min_confidence <= 1:
        raise ConfigError(f"--min-confidence must lie in [0, 1], got {cfg.min_confidence}")
    if judge is None and not cfg.model:
        raise ConfigError("--model is required (a checkpoint directory, a model TOML or a preset name)")
    try:  # the input, the output and its records are checked before the model's slow load
        meta = {
            "source": cfg.queries,
            "fingerprint": fingerprint_file(cfg.queries),
            **judge_identity(cfg),
            "max_think_tokens": cfg.max_think_tokens,
            "prompt": get_prompt(cfg.prompt).key,
        }
        queries = read_queries(cfg.queries)
        check_output(Path(cfg.out), cfg.queries, restart=cfg.restart)
        preflight(records_path(Path(cfg.out)), label_meta(meta, cfg.votes, cfg.seed), restart=cfg.restart)
    except (DataError, EvalError) as e:
        print(f"rrm-jax label: {e}", file=sys.stderr)
        return 2
    if judge is None:
        from rrm_jax.evaluation.cli import clamp_generation, load_model, make_judge

        if cfg.distributed:  # before any JAX work
            initialize()
        model = load_model(cfg)
        judge = make_judge(model, clamp_generation(model, cfg), cfg.max_think_tokens)
    try:
        t = label(
            judge,
            queries,
            cfg.out,
            meta=meta,
            votes=cfg.votes,
            seed=cfg.seed,
            min_confidence=cfg.min_confidence,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            restart=cfg.restart,
        )
    except (EvalError, DataError) as e:
        print(f"rrm-jax label: {e}", file=sys.stderr)
        return 2
    if is_main():
        msg = (
            f"{t['queries']} queries, {t['comparisons']} comparisons -> {t['kept']} pairs in {cfg.out}; "
            f"dropped {t['dropped_low_confidence']} below --min-confidence {cfg.min_confidence}, "
            f"{t['undecided']} undecided"
        )
        if t["not_judged"]:
            msg += f", {t['not_judged']} not judged (too long; the records hold why)"
        print(msg)
    return 0
