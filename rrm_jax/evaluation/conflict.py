"""The RRM authors' "conflict pairs" protocol on best-of-K data (``rrm-jax bon DATA --protocol rrm-conflict-pairs``).

For each question with at least one correct and one incorrect candidate, ``rounds`` pairs are drawn, each one
correct against one incorrect candidate picked by a seeded RNG keyed on (seed, question, round); each run (one
per seed, ``runs`` of them from ``seed``) shows every pair in a seeded random order and samples one verdict.
A run's accuracy is the mean credit over its pairs (the correct side 1, the incorrect 0, no verdict - no
``</think>`` or no ``\\boxed{}`` - 0.5); ``voted`` takes each pair's majority across the runs (a tie or no vote
at all 0.5). Questions with no conflict (all correct, or all incorrect) are counted and left out.

Each run's verdicts are evaluation records (``OUT/conflict-seed<s>.jsonl``): a killed run resumes, a rerun
with other data or settings is refused.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rrm_jax.core.seeds import derive_seed
from rrm_jax.data.records import PairRecord
from rrm_jax.evaluation.run import run_records
from rrm_jax.evaluation.scoring import credit


def conflict_pairs(items: Sequence, rounds: int, seed: int) -> tuple[list[PairRecord], int]:
    """The protocol's pairs (``a`` the correct candidate, label 0; ids ``<question>/r<round>``) and the count of
    questions without a conflict."""
    pairs, skipped = [], 0
    for item in items:
        right = [i for i, ok in enumerate(item.correct) if ok]
        wrong = [i for i, ok in enumerate(item.correct) if not ok]
        if not right or not wrong:
            skipped += 1
            continue
        for r in range(rounds):
            rng = np.random.default_rng(derive_seed(seed, zlib.crc32(item.id.encode()), r))
            c, w = int(rng.choice(right)), int(rng.choice(wrong))
            pairs.append(PairRecord(f"{item.id}/r{r}", item.query, item.candidates[c], item.candidates[w], 0))
    return pairs, skipped


def conflict_scores(runs: Sequence[Sequence[dict]]) -> dict:
    """Each run's accuracy (credit: 1 / 0, and 0.5 for no verdict) and the accuracy of the majority across runs."""
    per_run = [float(np.mean([credit(0, r["winner"]) for r in recs])) if recs else None for recs in runs]
    voted = []
    for picks in zip(*[[r["winner"] for r in recs] for recs in runs]):
        right, wrong = picks.count(0), picks.count(1)
        voted.append(0.5 if right == wrong else float(right > wrong))
    return {"runs": per_run, "voted": float(np.mean(voted)) if voted else None, "pairs": len(voted)}


def run_conflict(judge, items, out: Path, *, meta: dict, rounds: int, runs: int, seed: int, **kw) -> dict:
    """Judge the protocol's pairs once per seed (resumable records), then score them."""
    pairs, skipped = conflict_pairs(items, rounds, seed)
    if not pairs:
        raise ValueError("no question has both a correct and an incorrect candidate: no conflict pair to judge")
    meta = {**meta, "protocol": "rrm-conflict-pairs", "rounds": rounds}
    done = [
        run_records(judge, pairs, out / f"conflict-seed{s}.jsonl", meta=meta, votes=1, swap="random", seed=s, **kw)
        for s in range(seed, seed + runs)
    ]
    return {**conflict_scores(done), "questions": len(items), "no_conflict": skipped, "rounds": rounds}
