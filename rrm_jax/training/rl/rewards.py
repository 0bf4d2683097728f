"""Rewards: pluggable functions ``(prompts, completions, batch) -> np.ndarray[float32]`` (one per completion).

``prompts[i]`` is the prompt of ``completions[i]`` (prompt-major, G per prompt); ``batch`` holds
per-completion fields from the data: at least ``label`` (int array, the side holding ``chosen``: 0 = shown
first, 1 = shown second) and the lists ``query``, ``chosen``, ``rejected``. A reward function may use any
of them, so a user can train a policy with an RRM judge as the reward just as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from rrm_jax.judge.parse import parse_verdict


class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], batch: dict) -> np.ndarray: ...


def _parse(text: str) -> int | None:
    return parse_verdict(text)  # the judge's parsing rule, the one evaluation uses


def verdict_reward(prompts, completions, batch, *, correct: float = 1.0, wrong: float = -1.0) -> np.ndarray:
    """The RRM paper's rule: +1 when the parsed verdict picks the side holding ``chosen``, else -1.

    A completion without a parseable verdict (no ``</think>``, no boxed answer, truncated) gets -1.
    """
    labels = np.asarray(batch["label"])
    if len(labels) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(labels)} labels")
    out = np.full(len(completions), wrong, np.float32)
    for i, c in enumerate(completions):
        v = _parse(c.text)
        if v is not None and v == int(labels[i]):
            out[i] = correct
    return out


def verdicts(completions) -> np.ndarray:
    """Parsed verdict per completion: 0, 1, or -1 when none (for accuracy / invalid-rate metrics)."""
    return np.array([(-1 if (v := _parse(c.text)) is None else v) for c in completions], np.int32)


REWARDS: dict[str, Callable] = {"verdict": verdict_reward}


def get(name_or_fn) -> Callable:
    """A reward function by name (``"verdict"``) or ``"module:function"``, or the callable itself."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn in REWARDS:
        return REWARDS[name_or_fn]
    if ":" in name_or_fn:
        import importlib

        mod, fn = name_or_fn.split(":", 1)
        return getattr(importlib.import_module(mod), fn)
    raise ValueError(f"unknown reward {name_or_fn!r}: use one of {sorted(REWARDS)} or 'module:function'")


def overlong_penalty(lengths, max_len: int, buffer: int) -> np.ndarray:
    """DAPO's soft overlong punishment: 0 up to ``max_len - buffer`` tokens, then falling linearly to -1 at
    ``max_len`` (and -1 beyond), so a response is told it runs long before the cap cuts it off."""
    n = np.asarray(lengths, np.float32)
    return np.clip((max_len - buffer - n) / buffer, -1.0, 0.0).astype(np.float32)


def with_terms(reward_fn: Callable, terms: Sequence[tuple[float, Callable]]) -> Callable:
    """``reward_fn`` plus ``weight * term(prompts, completions, batch)`` for each term (a rule reward beside a
    judge's, a length penalty), each term's mean reported as ``reward_<name>``; the stats of ``reward_fn`` pass."""

    def total(prompts, completions, batch):
        out = np.asarray(reward_fn(prompts, completions, batch), np.float32)
        stats = dict(getattr(reward_fn, "last_stats", {}))
        for weight, term in terms:
            part = np.asarray(term(prompts, completions, batch), np.float32)
            stats[f"reward_{term.__name__}"] = float(part.mean())
            out = out + weight * part
        total.last_stats = stats
        return out

    total.last_stats = {}
    return total
