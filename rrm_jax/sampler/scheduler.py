"""``generate``: n completions per prompt for a list of prompts, a loop over the sampling engine.

All scheduling (continuous batching, chunked prefill, refills, stop strings) is :mod:`rrm_jax.sampler.engine`'s
and every shape comes from :func:`rrm_jax.sampler.planner.plan`; this module plans one engine for the whole
list, submits every prompt and steps it until all are done.

The KV cache ``[L, slots, S, K, hd]`` (``[L, slots, K, S, hd]`` on CPU: ``KVCache.heads_major``) is preallocated
once per call (S = bucketed prompt length + max_new_tokens + forced-suffix length), sharded by its logical axes
(``KVCache.axes``) through the model's ShardingRules and donated to every call, as is the per-slot state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rrm_jax.core.api import Model
from rrm_jax.core.progress import Progress
from rrm_jax.sampler.config import SamplingConfig  # also the old import path: rrm_jax.sampler.scheduler
from rrm_jax.sampler.engine import Completion, Engine, GenerateStats
from rrm_jax.sampler.inputs import forced_ids, prompt_ids, stop_ids, token_seq
from rrm_jax.sampler.planner import PREFILL_CHUNK, PREFILL_ROWS, plan

__all__ = ["Completion", "GenerateStats", "SamplingConfig", "generate"]


def generate(
    model: Model,
    prompts: Sequence[str | Sequence[int]],
    config: SamplingConfig,
    *,
    progress: bool = False,
    continuous: bool = True,
    max_new_tokens: Sequence[int] | None = None,
    chunk_steps: int = 32,
    refill_min: int | None = None,
    stats: GenerateStats | None = None,
    return_stats: bool = False,
    unroll_layers: bool | None = None,
    prefill_chunk: int = PREFILL_CHUNK,
    prefill_rows: int = PREFILL_ROWS,
    max_stall: int = 4,
    prefill_steps: int = 4,
    share_prefixes: bool = True,
) -> list[Completion] | tuple[list[Completion], GenerateStats]:
    """Sample ``config.n`` completions per prompt, ordered prompt-major ([p0 s0, p0 s1, ..., p1 s0, ...]).

    ``continuous=False`` is the static path (a new group of requests starts only when every slot is done),
    kept for comparison. ``max_new_tokens`` optionally overrides the limit per prompt. ``refill_min`` is how
    many finished slots make the decode loop hand back for a refill (default ``slots // 4``).
    ``return_stats=True`` returns ``(completions, GenerateStats)`` (``stats``, if given, is the one filled).
    ``unroll_layers`` picks the decode's layer form (None: :func:`rrm_jax.sampler.decode.choose`'s, by platform).
    Prompts are prefilled in chunks of ``prefill_chunk`` tokens, up to ``prefill_rows`` prompts per call,
    interleaved with decode chunks of at most ``prefill_steps`` steps while prompts wait (running rows wait for
    at most ``max_stall`` prefill calls in a row). ``share_prefixes`` copies the KV of a prompt prefix another
    row already holds (whole chunks) instead of computing it again.
    """
    if not isinstance(config, SamplingConfig):
        raise TypeError(f"config must be a SamplingConfig, got {type(config).__name__}")
    if isinstance(prompts, (str, bytes)) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of strings or token-id lists")
    tok = model.tokenizer
    limits = [config.max_new_tokens] * len(prompts) if max_new_tokens is None else [int(x) for x in max_new_tokens]
    if len(limits) != len(prompts) or min(limits) < 1:
        raise ValueError("max_new_tokens (per prompt) must give one value >= 1 per prompt")
    budgets = config.max_think_tokens is not None
    suffix = forced_ids(tok, config) if budgets else ()
    think_end = token_seq(tok, config.think_end, "think_end", single_token=True) if budgets else ()
    ids = [prompt_ids(model, p, f"prompts[{i}]", n, len(suffix)) for i, (p, n) in enumerate(zip(prompts, limits))]
    if budgets and not suffix:
        raise ValueError("SamplingConfig.forced_suffix is empty but max_think_tokens is set")
    shapes = plan(
        requests=len(prompts) * config.n,
        max_slots=config.max_slots,
        batch_multiple=model.batch_multiple(),
        prompt_len=max(len(x) for x in ids),
        max_new=max(limits),
        suffix_len=len(suffix),
        think_end_len=len(think_end),
        n_stops=len(stop_ids(model, config)),
        n_probes=len(config.probe_token_ids),
        top_k=config.top_k,
        prefill_chunk=prefill_chunk,
        prefill_rows=prefill_rows,
    )
    engine = Engine(
        model,
        shapes,
        config,
        unroll_layers=unroll_layers,
        continuous=continuous,
        chunk_steps=chunk_steps,
        refill_min=refill_min,
        max_stall=max_stall,
        prefill_steps=prefill_steps,
        share_prefixes=share_prefixes,
        stats=stats,
    )
    requests = [
        engine.submit(x, config if n == config.max_new_tokens else _with_limit(config, n), index=i)
        for i, (x, n) in enumerate(zip(ids, limits))
    ]
    with Progress("generating", len(prompts) * config.n, rate="seq", enabled=progress) as bar:
        engine.run(lambda c: bar.update(advance=1))
    outs = [c for r in requests for c in r.completions]
    return (outs, engine.stats) if return_stats else outs


def _with_limit(config: SamplingConfig, n: int) -> SamplingConfig:
    return dataclasses.replace(config, max_new_tokens=n)
