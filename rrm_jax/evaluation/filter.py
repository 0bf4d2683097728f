"""`rrm-jax filter PAIRS --model JUDGE --samples 4 --out kept.jsonl`: the RRM authors' difficulty filter.

Before RL the authors drop every training pair the judge already gets right in all of k samples: GRPO learns
nothing from a group whose rewards are all +1. Each pair of PAIRS (any schema ``rrm-jax train`` reads: ours,
Skywork's message lists, the authors' verl-style rows; .jsonl, .json or .parquet) is judged ``samples`` times,
in a seeded random order per pair; its pass count is how many samples picked ``chosen``. The pairs that pass
fewer than ``samples`` times go to ``--out`` as ``{query, chosen, rejected, passes, samples, id}``, a
``data.path`` for a GRPO recipe as it is.

Resume: the verdicts are records (``<out>.records.jsonl``, the evaluation records: lock, torn-line repair, a
refusal to mix other data or settings), and ``--out`` is rewritten from them at the end, so a killed run goes on
where it stopped and never writes a pair twice.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

from rrm_jax.core.distributed import is_main
from rrm_jax.core.errors import ConfigError
from rrm_jax.data.preference import check_pair, normalise_pair, rows
from rrm_jax.data.records import DataError, PairRecord
from rrm_jax.evaluation.config import JudgeOptions, build_config, validate
from rrm_jax.evaluation.label import _positional_data, check_output, records_path
from rrm_jax.evaluation.records import EvalError, fingerprint_file, judge_identity, move_aside, preflight
from rrm_jax.evaluation.run import run_meta, run_records
from rrm_jax.judge.prompt import get_prompt


@dataclasses.dataclass(frozen=True)
class FilterConfig(JudgeOptions):
    queries: str = ""  # the positional PAIRS: training pairs in any schema `rrm-jax train` reads
    out: str = "kept.jsonl"
    samples: int = 4  # verdicts per pair; a pair right in all of them is dropped
    max_think_tokens: int | None = None
    batch_size: int = 64
    restart: bool = False


def read_pairs_to_filter(path: str | Path) -> tuple[list[PairRecord], Counter]:
    """PAIRS as records (``a`` = chosen, label 0), ids from an ``id`` field or the row; unusable rows counted."""
    pairs, dropped = [], Counter()
    for n, rec in rows(Path(path)):
        why = rec if isinstance(rec, str) else None
        if why is None:
            rec = normalise_pair(rec) if isinstance(rec, dict) else rec
            why = check_pair(rec) if isinstance(rec, dict) else "not a JSON object"
        if why is not None:
            dropped[why.split(" (")[0]] += 1
            continue
        rid = rec.get("id", f"row-{n}")
        pairs.append(PairRecord(str(rid), rec["query"], rec["chosen"], rec["rejected"], 0, "", "pairs"))
    if len({p.id for p in pairs}) != len(pairs):
        raise DataError(f"{path}: duplicate ids")
    if not pairs:
        raise DataError(f"{path}: no usable preference pairs (dropped: {dict(dropped)})")
    return pairs, dropped


def kept_pairs(records: list[dict], pairs: list[PairRecord], samples: int) -> list[dict]:
    """The judged pairs the judge did not get right in all ``samples`` verdicts, with their pass counts."""
    by_id, kept = {p.id: p for p in pairs}, []
    for r in records:
        if r.get("error") or r["votes_a"] >= samples:
            continue
        p = by_id[r["id"]]
        kept.append(
            {"query": p.query, "chosen": p.response_a, "rejected": p.response_b, "passes": r["votes_a"],
             "samples": samples, "id": r["id"]}
        )  # fmt: skip
    return kept


def filter_main(argv: list[str], *, judge=None) -> int:
    cfg = build_config(
        FilterConfig,
        _positional_data(argv),
        "rrm-jax filter",
        "keep the training pairs a judge does not already get right in every one of --samples verdicts",
    )
    validate(cfg)
    if not cfg.queries:
        raise ConfigError("PAIRS is required: training pairs {query, chosen, rejected} (.jsonl, .json or .parquet)")
    if cfg.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {cfg.samples}")
    if judge is None and not cfg.model:
        raise ConfigError("--model is required (a checkpoint directory, a model TOML or a preset name)")
    out, records = Path(cfg.out), records_path(cfg.out)
    try:  # the input, the output and its records are checked before the model's slow load
        pairs, dropped = read_pairs_to_filter(cfg.queries)
        meta = {
            "dataset": "filter",
            "source": cfg.queries,
            "fingerprint": fingerprint_file(cfg.queries),
            **judge_identity(cfg),
            "max_think_tokens": cfg.max_think_tokens,
            "prompt": get_prompt(cfg.prompt).key,
        }
        check_output(out, cfg.queries, restart=cfg.restart, command="rrm-jax filter")
        preflight(records, run_meta(meta, cfg.samples, "random", cfg.seed, False), restart=cfg.restart)
    except (DataError, EvalError) as e:
        print(f"rrm-jax filter: {e}", file=sys.stderr)
        return 2
    if cfg.restart and is_main():
        move_aside(out)  # the records are moved aside by run_records; nothing is deleted
    if judge is None:
        from rrm_jax.evaluation.cli import clamp_generation, load_model, make_judge

        model = load_model(cfg)
        judge = make_judge(model, clamp_generation(model, cfg), cfg.max_think_tokens)
    try:
        recs = run_records(
            judge,
            pairs,
            records,
            meta=meta,
            votes=cfg.samples,
            swap="random",
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            description="filtering",
            restart=cfg.restart,
        )
    except (EvalError, DataError) as e:
        print(f"rrm-jax filter: {e}", file=sys.stderr)
        return 2
    if not is_main():
        return 0
    kept = kept_pairs(recs, pairs, cfg.samples)
    out.write_text("".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept))
    not_judged = sum(bool(r.get("error")) for r in recs)
    passes = Counter(r["votes_a"] for r in recs if not r.get("error"))
    msg = (
        f"{len(pairs)} pairs, {cfg.samples} verdicts each -> {len(kept)} kept in {out} (right in fewer than "
        f"{cfg.samples}), {passes[cfg.samples]} dropped (right in all); passes: "
        + ", ".join(f"{k}/{cfg.samples}: {passes[k]}" for k in range(cfg.samples + 1))
    )
    if not_judged:
        msg += f"; {not_judged} not judged (too long: the records hold why; they are not kept)"
    if dropped:
        msg += f"; unusable input rows: {dict(dropped)}"
    print(msg)
    return 0
