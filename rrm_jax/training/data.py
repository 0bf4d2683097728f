"""The training input pipeline (grain): preference pairs -> shuffled, repeated, randomly ordered, rendered
and tokenised judge prompts, batched for rollouts; plus the SFT variant over {prompt, completion} traces.

Bad input is dropped when the file is read, counted by reason (the first few named by file:line):
unparseable JSON, missing/empty/non-string fields, ``chosen == rejected``, and pairs whose rendered prompt
would exceed ``data.max_prompt_tokens`` (dropped, never truncated: a truncated pair may hide the very
difference the judge must see). The length check uses the fields' token counts plus the template's own
(a conservative estimate; exact BPE merges across field boundaries can only shorten it).

The iterator's state (grain's ``get_state``: the next index in the shuffled, repeated order) is what the
checkpoint stores; per-example position swaps come from grain's per-index RNG, so a resumed run sees
exactly the examples, in exactly the order, that an uninterrupted run would.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rrm_jax.core.distributed import barrier, is_main
from rrm_jax.core.errors import ConfigError, DataError
from rrm_jax.data.preference import check_pair, normalise_pair, rows
from rrm_jax.training.rl.rollout import to_prompt, to_query_prompt

if TYPE_CHECKING:
    import grain

MAX_REPORTED = 5


# ------------------------------------------------------------------------------------------ data files
def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Verifiable toy pairs: "a+b=?" with the right sum as chosen and a near miss as rejected."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(0, 10, 2))
        wrong = a + b + int(rng.choice([-2, -1, 1, 2]))
        out.append({"query": f"{a}+{b}=?", "chosen": str(a + b), "rejected": str(wrong)})
    return out


def synthetic_queries(n: int, seed: int = 0) -> list[dict]:
    """A policy run's toy queries "a+b=?" with the sum as ``answer`` (held back: a metric, never a reward) and
    as ``reference`` (what judge_reference compares against)."""
    return [{"query": p["query"], "answer": p["chosen"], "reference": p["chosen"]} for p in synthetic_pairs(n, seed)]


def prepare_data(config, run_dir: Path, mode) -> tuple[Path, dict]:
    """The data file a recipe names, writing the mode's synthetic one first when ``data.synthetic > 0``."""
    d = config.data
    if d.synthetic:
        name, records = mode.synthetic(d.synthetic, d.shuffle_seed)
        path = run_dir / name
        if is_main():
            path.write_text("".join(json.dumps(p) + "\n" for p in records))
        barrier("synthetic-pairs")
        return path, {"synthetic": d.synthetic}
    if not d.path:
        raise ConfigError("data.path is empty (set it, or data.synthetic = N for generated pairs)")
    path = Path(d.path)
    if not path.exists():
        raise DataError(f"data.path {path} does not exist")
    return path, {}


def _read_jsonl(
    path: Path, check: Callable[[dict, str], str | None], prepare: Callable[[dict], dict] | None = None
) -> tuple[list[dict], Counter, list[str]]:
    """The records of ``path`` that ``check`` passes (after ``prepare``, which the kept records keep), the count
    of each reason for a dropped line, and the first few located problems."""
    keep, reasons, problems = [], Counter(), []
    for n, rec in rows(path):
        where = f"{path}:{n}: "
        if isinstance(rec, str):
            why = where + rec
        else:
            if isinstance(rec, dict) and prepare is not None:
                rec = prepare(rec)
            why = check(rec, where) if isinstance(rec, dict) else f"{where}not a JSON object"
        if why is None:
            keep.append(rec)
            continue
        reasons[why.split(": ", 1)[1].split(" (")[0]] += 1
        if len(problems) < MAX_REPORTED:
            problems.append(why)
    return keep, reasons, problems


def read_training_pairs(path: Path, tokenizer, render: Callable, max_prompt_tokens: int) -> tuple[list[dict], dict]:
    """Valid training pairs from a JSONL of {query, chosen, rejected} (or Skywork-style message lists), each
    short enough once rendered, and a report of what was dropped and why. (The benchmark readers that give a
    labelled PairSet are ``rrm_jax.data.read_pairs``.)"""
    pairs, reasons, problems = _read_jsonl(path, check_pair, prepare=normalise_pair)
    overhead = len(tokenizer.encode(render("", "", ""), add_special_tokens=False)) + 12
    kept = []
    if pairs:
        fields = [
            tokenizer([p[k] for p in pairs], add_special_tokens=False)["input_ids"]
            for k in ("query", "chosen", "rejected")
        ]
        for i, p in enumerate(pairs):
            n = overhead + sum(len(f[i]) for f in fields)
            if n > max_prompt_tokens:
                reasons[f"prompt longer than max_prompt_tokens={max_prompt_tokens}"] += 1
                continue
            kept.append({k: p[k] for k in ("query", "chosen", "rejected")})
    if not kept:
        raise DataError(f"{path}: no usable preference pairs (dropped: {dict(reasons)}; e.g. {problems[:3]})")
    return kept, {
        "read": len(kept) + sum(reasons.values()),
        "kept": len(kept),
        "dropped": dict(reasons),
        "problems": problems,
    }


def _source(items):
    """grain's dataset over ``items``. grain is imported here: the Trainer imports this module, and only the recipe
    loop reads through grain, so an accelerator image without grain still runs the step (rrm-jax bench device)."""
    import grain

    return grain.MapDataset.source(items)


class _Pipeline:
    def __init__(self, ds: grain.MapDataset):
        self.ds = ds
        self.it = iter(ds)

    def next(self):
        return next(self.it)

    def get_state(self) -> dict:
        return self.it.get_state()

    def set_state(self, state: dict) -> None:
        self.it = iter(self.ds)
        self.it.set_state(state)


class PairPipeline(_Pipeline):
    """Batches of ``grpo.prompts_per_step`` judge prompts (dicts with prompt_ids and label), endlessly."""

    def __init__(self, path: Path, render: Callable, tokenizer, config):
        d = config.data
        pairs, self.report = read_training_pairs(Path(path), tokenizer, render, d.max_prompt_tokens)

        def show(pair, rng: np.random.Generator):
            flip = bool(rng.random() < 0.5) if d.swap else False
            return to_prompt(pair, flip, render, tokenizer)

        ds = (
            _source(pairs)
            .shuffle(seed=d.shuffle_seed)
            .repeat(None)
            .random_map(show, seed=config.seed)
            .batch(config.grpo.prompts_per_step, batch_fn=list)
        )
        super().__init__(ds)


def _check_query(needs_reference: bool):
    def check(rec: dict, where: str) -> str | None:
        keys = ("query", "reference") if needs_reference else ("query",)
        for k in keys:
            if not isinstance(rec.get(k), str) or not rec[k].strip():
                return f"{where}field {k!r} is missing, empty or not a string"
        if "answer" in rec and not isinstance(rec["answer"], (str, int, float)):
            return f"{where}field 'answer' is not a string or number"
        return None

    return check


class QueryPipeline(_Pipeline):
    """A policy run's input: batches of ``grpo.prompts_per_step`` queries from a JSONL of ``{query}`` (with an
    optional ``answer``, held back for the answer_accuracy metric, and the ``reference`` judge_reference needs).
    Prompts longer than data.max_prompt_tokens are dropped and counted."""

    def __init__(self, path: Path, tokenizer, config):
        recs, reasons, problems = _read_jsonl(
            Path(path), _check_query(config.grpo.reward == "judge_reference" or config.grpo.rule_weight > 0)
        )
        items = []
        for r in recs:
            # tokenised once here: the trainer samples from these prompt_ids
            item = to_query_prompt(
                {k: (str(r[k]) if k == "answer" else r[k]) for k in ("query", "answer", "reference") if k in r},
                tokenizer,
            )
            if len(item["prompt_ids"]) > config.data.max_prompt_tokens:
                reasons[f"prompt longer than max_prompt_tokens={config.data.max_prompt_tokens}"] += 1
                continue
            items.append(item)
        if not items:
            raise DataError(f"{path}: no usable queries (dropped: {dict(reasons)}; e.g. {problems[:3]})")
        self.report = {
            "read": len(recs) + sum(reasons.values()),
            "kept": len(items),
            "dropped": dict(reasons),
            "problems": problems,
        }
        ds = (
            _source(items)
            .shuffle(seed=config.data.shuffle_seed)
            .repeat(None)
            .batch(config.grpo.prompts_per_step, batch_fn=list)
        )
        super().__init__(ds)


def sequence_limit(config) -> int:
    """The longest training row a recipe allows: ``grpo.seq_bucket`` when fixed, else prompt + new tokens."""
    return config.grpo.seq_bucket or config.data.max_prompt_tokens + config.sampling.max_new_tokens


def _check_trace(rec: dict, where: str) -> str | None:
    for k in ("prompt", "completion"):
        if not isinstance(rec.get(k), str) or not rec[k]:
            return f"{where}field {k!r} is missing, empty or not a string"
    return None


class SFTPipeline(_Pipeline):
    """Batches of (prompt_ids, completion_ids) from a JSONL of {prompt, completion} texts (chat-templated)."""

    def __init__(self, path: Path, tokenizer, config):
        recs, reasons, problems = _read_jsonl(Path(path), _check_trace)
        items = []
        for r in recs:
            p = tokenizer.encode(r["prompt"], add_special_tokens=False)
            c = tokenizer.encode(r["completion"], add_special_tokens=False)
            if tokenizer.eos_token_id is not None:
                c = c + [tokenizer.eos_token_id]
            if len(p) + len(c) - 1 > sequence_limit(config):
                reasons["trace longer than the sequence limit"] += 1
                continue
            items.append((np.asarray(p, np.int32), np.asarray(c, np.int32)))
        if not items:
            raise DataError(f"{path}: no usable traces (dropped: {dict(reasons)}; e.g. {problems[:3]})")
        self.report = {
            "read": len(recs) + sum(reasons.values()),
            "kept": len(items),
            "dropped": dict(reasons),
            "problems": problems,
        }
        ds = (
            _source(items)
            .shuffle(seed=config.data.shuffle_seed)
            .repeat(None)
            .batch(config.batch_size, batch_fn=lambda xs: ([x[0] for x in xs], [x[1] for x in xs]))
        )
        super().__init__(ds)
