"""Fitting comparisons into the judge model's context, decided per item before any sampling.

The sampler refuses a whole batch when one prompt (plus the generation length) exceeds the context; an
evaluation instead skips just that item with an error record (:func:`misfit`, :data:`NO_VERDICT`) and goes on.
:func:`clamp_generation` shortens a generation length that leaves no room for any prompt (the released
setting of 8192 new tokens on a model with a short context), once, with a notice.
"""

from __future__ import annotations

import dataclasses
import sys

from rrm_jax.core.errors import ConfigError
from rrm_jax.judge.judge import new_token_limit
from rrm_jax.judge.verdict import Verdict
from rrm_jax.sampler.config import SamplingConfig
from rrm_jax.sampler.inputs import forced_ids

# the record of an item that was not judged: no verdict, nothing drawn (credit 0.5, like any missing verdict)
NO_VERDICT = Verdict(winner=None, votes_a=0, votes_b=0, invalid=0, soft=0.5)


def _context(judge) -> int | None:
    cfg = getattr(getattr(judge, "model", None), "config", None)
    return getattr(cfg, "max_position_embeddings", None)


def misfit(judge, item_id: str, query: str, a: str, b: str) -> str | None:
    """Why the comparison ``item_id`` cannot be judged by ``judge`` within its model's context, or None.

    Judges without a model context (test doubles, remote judges) are trusted to handle every item."""
    ctx = _context(judge)
    if ctx is None or not hasattr(judge, "fit") or getattr(judge, "tokenizer", None) is None:
        return None
    try:
        q, x, y, _ = judge.fit(query, a, b)
    except ValueError as e:  # max_prompt_tokens smaller than the template itself
        return f"item {item_id!r}: {e}; skipped (raise --max-prompt-tokens)"
    tok = judge.tokenizer
    n = max(
        len(tok.encode(judge.render(q, x, y), add_special_tokens=False)),
        len(tok.encode(judge.render(q, y, x), add_special_tokens=False)),
    )
    sampling = judge.sampling
    forced = len(getattr(judge, "suffix_ids", ())) if sampling.max_think_tokens is not None else 0
    room = ctx - sampling.max_new_tokens - forced
    if n <= room:
        return None
    hint = (
        f"pass --max-prompt-tokens {room} to cut long texts in the middle" if room >= 64 else "lower --max-new-tokens"
    )
    return (
        f"item {item_id!r}: its prompt has {n} tokens; with max_new_tokens={sampling.max_new_tokens} "
        f"(+{forced} forced) it exceeds the model's context ({ctx} tokens); skipped: {hint}"
    )


def clamp_generation(model, opts):
    """``opts`` with ``max_new_tokens`` shortened when it leaves less than ``max_prompt_tokens`` (or a quarter of
    the context) for the prompt; prints a notice when it does."""
    tok = getattr(model, "tokenizer", None)
    forced = len(forced_ids(tok, SamplingConfig())) if tok is not None else len(SamplingConfig().forced_suffix)
    limit = new_token_limit(model, opts.max_prompt_tokens, forced)
    if limit is None or opts.sampling.max_new_tokens <= limit:
        return opts
    ctx = model.config.max_position_embeddings
    prompt = ctx - forced - limit  # what new_token_limit left the prompt
    if limit < 1:
        raise ConfigError(
            f"max_prompt_tokens={opts.max_prompt_tokens} leaves no room to generate in the model's "
            f"context ({ctx} tokens); pass a smaller --max-prompt-tokens"
        )
    print(
        f"note: max_new_tokens={opts.sampling.max_new_tokens} leaves too little of the model's context ({ctx} tokens) for "
        f"the prompt ({prompt}); generating at most {limit} new tokens (set --max-new-tokens / "
        "--max-prompt-tokens to choose the split)",
        file=sys.stderr,
    )
    return dataclasses.replace(opts, sampling=dataclasses.replace(opts.sampling, max_new_tokens=limit))
