"""DPO input: preference pairs ``{query, chosen, rejected}`` (what ``rrm-jax label`` writes) -> a policy's token
ids -> packed DPO batches, and the grain pipeline ``mode = "dpo"`` reads them through.

The prompt is the query as the user turn of the policy's chat template (:func:`rrm_jax.core.tokenizers.chat_prompt`)
and each completion is its text plus EOS (the policy learns to stop, as its samples do). The batch layout is
rl.dpo's: ``P`` chosen rows then ``P`` rejected rows, one sequence length for both halves. Unusable pairs are
dropped when the file is read and counted by reason, as the GRPO pipeline does (training.data).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rrm_jax.core.errors import DataError
from rrm_jax.core.tokenizers import chat_prompt
from rrm_jax.data.preference import check_pair, normalise_pair
from rrm_jax.training.data import _Pipeline, _read_jsonl, _source, sequence_limit
from rrm_jax.training.rl.rollout import bucket_len, pack


def tokenize_pair(pair: dict, tokenizer) -> dict:
    """``pair`` plus ``prompt_ids``, ``chosen_ids`` and ``rejected_ids`` (int32 arrays; completions end in EOS)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def completion(text: str) -> np.ndarray:
        return np.asarray(list(tokenizer.encode(text, add_special_tokens=False)) + eos, np.int32)

    return dict(
        pair,
        prompt_ids=np.asarray(chat_prompt(tokenizer, pair["query"]), np.int32),
        chosen_ids=completion(pair["chosen"]),
        rejected_ids=completion(pair["rejected"]),
    )


def pair_length(item: dict) -> int:
    """Training-row length of the longer side of a tokenised pair (tokens = sequence minus one)."""
    return len(item["prompt_ids"]) + max(len(item["chosen_ids"]), len(item["rejected_ids"])) - 1


def pack_pairs(items: Sequence[dict], *, slots: int, seq_bucket: int = 0) -> dict[str, np.ndarray]:
    """Tokenised pairs -> ``2 * slots`` right-padded rows: chosen in ``[0, slots)``, rejected in ``[slots, 2 slots)``
    (pair i at rows i and slots + i; the slots past ``len(items)`` are empty rows that weigh nothing)."""
    if slots < len(items):
        raise ValueError(f"{len(items)} pairs do not fit {slots} pair slots")
    t = bucket_len(max([pair_length(x) for x in items] + [1]), seq_bucket)
    prompts = [x["prompt_ids"] for x in items]
    halves = [
        pack(prompts, [x[side] for x in items], rows=slots, seq_bucket=t) for side in ("chosen_ids", "rejected_ids")
    ]
    return {k: np.concatenate([halves[0][k], halves[1][k]]) for k in halves[0] if k != "old_logp"}


def pair_slots(n: int, multiple: int) -> int:
    """Pair slots for ``n`` pairs: a multiple of ``multiple`` (micro-batches x data shards), so every micro-batch
    holds whole pairs and each half of it splits evenly over the data shards."""
    return -(-max(n, 1) // multiple) * multiple


def read_dpo_pairs(path: Path, tokenizer, max_len: int) -> tuple[list[dict], dict]:
    """Tokenised pairs from a JSONL of {query, chosen, rejected} (extra fields, e.g. ``confidence``, are kept
    out), dropping bad lines and pairs longer than ``max_len`` tokens; and a report of what was dropped and why."""
    pairs, reasons, problems = _read_jsonl(path, check_pair, prepare=normalise_pair)
    kept = []
    for p in pairs:
        item = tokenize_pair({k: p[k] for k in ("query", "chosen", "rejected")}, tokenizer)
        if pair_length(item) > max_len:
            reasons[f"pair longer than the sequence limit ({max_len} tokens)"] += 1
            continue
        kept.append(item)
    if not kept:
        raise DataError(f"{path}: no usable preference pairs (dropped: {dict(reasons)}; e.g. {problems[:3]})")
    return kept, {
        "read": len(kept) + sum(reasons.values()),
        "kept": len(kept),
        "dropped": dict(reasons),
        "problems": problems,
    }


class DPOPipeline(_Pipeline):
    """Batches of ``batch_size`` tokenised pairs (dicts for ``Trainer.dpo_step``), shuffled and repeated endlessly;
    its state is grain's, so a resumed run reads exactly the pairs an uninterrupted one would."""

    def __init__(self, path: Path, tokenizer, config):
        items, self.report = read_dpo_pairs(Path(path), tokenizer, sequence_limit(config))
        ds = _source(items).shuffle(seed=config.data.shuffle_seed).repeat(None).batch(config.batch_size, batch_fn=list)
        super().__init__(ds)
