"""Rollouts: prompts -> G samples each -> rewards -> advantages -> one padded training batch. The prompts are
judge prompts made from preference pairs (random order; the reward checks the verdict) or a policy's plain
queries (the reward comes from elsewhere, e.g. a judge: rl.judge_rewards).

The policy samples from the trainer's live params (``model.with_state(state.params)``: same arrays, same
mesh, no host copy). Rows are padded to a bucketed length (and the row count to a fixed multiple) so the
train step compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from rrm_jax.core.tokenizers import chat_prompt
from rrm_jax.sampler import generate
from rrm_jax.training.rl import advantages as adv_lib
from rrm_jax.training.rl.rewards import verdicts


def to_prompt(pair: dict, flip: bool, render: Callable, tokenizer) -> dict:
    """One pair shown in a given order: adds first/second, label (the side holding chosen) and prompt_ids."""
    first, second = (pair["rejected"], pair["chosen"]) if flip else (pair["chosen"], pair["rejected"])
    text = render(pair["query"], first, second)
    ids = list(text) if not isinstance(text, str) else tokenizer.encode(text, add_special_tokens=False)
    return dict(pair, first=first, second=second, label=int(flip), prompt=text, prompt_ids=np.asarray(ids, np.int32))


def to_query_prompt(example: dict, tokenizer) -> dict:
    """A policy's example: its ``query`` as the user turn of the chat template (core.tokenizers.chat_prompt)."""
    ids = chat_prompt(tokenizer, example["query"])
    return dict(example, prompt=example["query"], prompt_ids=np.asarray(ids, np.int32))


def assign_sides(pairs: Sequence[dict], *, seed: int, step: int, swap: bool = True) -> np.ndarray:
    """Per-example flips, a pure function of (seed, step, index) so a resumed run redraws the same ones."""
    if not swap:
        return np.zeros(len(pairs), bool)
    return np.random.default_rng([seed, step, 0x5A9]).random(len(pairs)) < 0.5


def bucket_len(n: int, fixed: int = 0, minimum: int = 16) -> int:
    if fixed:
        if n > fixed:
            raise ValueError(f"a sequence of {n} tokens exceeds seq_bucket={fixed}")
        return fixed
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def pack(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    completion_logprobs: Sequence[np.ndarray] | None = None,
    completion_masks: Sequence[np.ndarray] | None = None,
    row_multiple: int = 1,
    rows: int = 0,
    seq_bucket: int = 0,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Right-padded next-token rows: ``tokens``/``targets`` = seq[:-1]/seq[1:]; the loss mask covers the
    completion's targets. Row count is padded to ``rows`` (or a multiple of ``row_multiple``) with empty rows.
    """
    n = len(prompt_ids)
    lens = [len(p) + len(c) - 1 for p, c in zip(prompt_ids, completion_ids)]
    t = bucket_len(max(lens + [1]), seq_bucket)
    b = rows or -(-max(n, 1) // row_multiple) * row_multiple
    if b < n:
        raise ValueError(f"{n} sequences do not fit {b} rows")
    out = dict(
        tokens=np.full((b, t), pad_id, np.int32),
        targets=np.full((b, t), pad_id, np.int32),
        positions=np.zeros((b, t), np.int32),
        mask=np.zeros((b, t), bool),
        loss_mask=np.zeros((b, t), bool),
        old_logp=np.zeros((b, t), np.float32),
    )
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        seq = np.concatenate([np.asarray(p, np.int32), np.asarray(c, np.int32)])
        L = len(seq) - 1
        out["tokens"][i, :L] = seq[:-1]
        out["targets"][i, :L] = seq[1:]
        out["positions"][i, :L] = np.arange(L)
        out["mask"][i, :L] = True
        s = len(p) - 1  # target index of the first completion token
        cm = np.ones(len(c), bool) if completion_masks is None else np.asarray(completion_masks[i], bool)
        out["loss_mask"][i, s:L] = cm
        if completion_logprobs is not None:
            out["old_logp"][i, s:L] = np.asarray(completion_logprobs[i], np.float32)[: len(c)]
    return out


@dataclasses.dataclass
class Rollout:
    batch: dict[str, np.ndarray]  # packed rows incl. advantages [rows]
    rewards: np.ndarray  # [P*G]
    stats: dict[str, float]
    completions: list


def rollout(
    policy,
    examples: Sequence[dict],
    *,
    group_size: int,
    sampling,
    reward_fn: Callable,
    advantage: str = "grpo",
    adv_eps: float = 1e-6,
    rows: int = 0,
    row_multiple: int = 1,
    seq_bucket: int = 0,
    forced_len: int = 0,
    generate_fn: Callable | None = None,
    step: int = 0,
    answer_of: Callable[[str, str], bool] | None = None,
) -> Rollout:
    """Sample G completions per example and build the batch. Examples carry ``prompt_ids``, and ``label`` when
    they are judge prompts from pairs; ``step`` seeds the reward's own randomness (a judge's tournaments);
    ``answer_of(text, answer)`` scores a policy's response against held-back ground truth, for a metric only."""
    generate_fn = generate_fn or generate
    t0 = time.perf_counter()
    prompts = [e["prompt_ids"].tolist() for e in examples]
    comps = generate_fn(policy, prompts, dataclasses.replace(sampling, n=group_size))
    t_gen = time.perf_counter() - t0
    if len(comps) != len(examples) * group_size:
        raise RuntimeError(f"sampler returned {len(comps)} completions for {len(examples)} x {group_size}")
    rep = lambda key: [e.get(key) for e in examples for _ in range(group_size)]
    judging = all("label" in e for e in examples)  # judge prompts from pairs; else a policy's plain queries
    # a policy example's `answer` is for evaluation only: the reward never sees it
    meta = {k: rep(k) for k in ("query", "chosen", "rejected", "first", "second", "reference")}
    meta["label"] = np.asarray(rep("label") if judging else [-1] * len(comps), np.int32)
    meta["group"] = np.repeat(np.arange(len(examples)), group_size)
    meta["step"] = step
    prompt_texts = rep("prompt")
    rewards = np.asarray(reward_fn(prompt_texts, comps, meta), np.float32)
    if rewards.shape != (len(comps),):
        raise ValueError(f"reward function returned shape {rewards.shape}, expected ({len(comps)},)")
    advs = adv_lib.compute(rewards, group_size, advantage, adv_eps)

    masks = []
    for c in comps:
        m = np.ones(len(c.token_ids), bool)
        if c.forced_at is not None and forced_len:
            m[c.forced_at : c.forced_at + forced_len] = False  # forced suffix tokens were not sampled
        masks.append(m)
    batch = pack(
        [prompts[c_i // group_size] for c_i in range(len(comps))],
        [c.token_ids for c in comps],
        completion_logprobs=[c.logprobs for c in comps],
        completion_masks=masks,
        rows=rows,
        row_multiple=row_multiple,
        seq_bucket=seq_bucket,
    )
    batch["advantages"] = np.zeros(len(batch["tokens"]), np.float32)
    batch["advantages"][: len(advs)] = advs
    lengths = np.array([c.num_tokens for c in comps], np.float32)
    groups = rewards.reshape(-1, group_size)
    stats = dict(
        reward_mean=float(rewards.mean()),
        reward_std=float(rewards.std()),
        response_len=float(lengths.mean()),
        response_len_max=float(lengths.max()),
        truncated_frac=float(np.mean([c.finish_reason != "stop" for c in comps])),
        zero_signal_frac=float(np.mean(groups.max(1) == groups.min(1))),
        time_generate=t_gen,
    )
    stats.update(getattr(reward_fn, "last_stats", {}))
    if judging:
        v = verdicts(comps)
        stats["accuracy"] = float(np.mean(v == meta["label"]))
        stats["invalid_frac"] = float(np.mean(v < 0))
    elif answer_of is not None and all(e.get("answer") is not None for e in examples):
        # held-back ground truth, when the data has it: how often the policy is right (never a reward)
        answers = rep("answer")
        stats["answer_accuracy"] = float(np.mean([answer_of(c.text, a) for c, a in zip(comps, answers)]))
    return Rollout(batch, rewards, stats, comps)
