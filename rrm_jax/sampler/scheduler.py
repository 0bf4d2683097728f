"""KV-cache sampling: n samples per prompt, continuous batching, thinking budgets.

This module is the host side: it schedules requests onto slots and turns rows into completions. Two
compiled functions of ``rrm_jax.sampler.loop.SamplerLoop`` do all device work:

- ``prefill`` advances up to R waiting prompts by one chunk of C tokens each, written at each prompt's own
  cache offset, so prompts of any lengths share a call and padding costs < C per prompt. A prompt's last
  chunk copies its cache rows into the slots of all its samples (n samples share ONE prefill), resets those
  slots' bookkeeping and chooses their first token. Prefill calls interleave with decode chunks, so a long
  prompt arriving mid-run does not stall the running rows.
- ``decode`` runs a ``lax.while_loop`` of up to ``chunk_steps`` single-token steps over all slots. It exits
  early when enough slots have finished that the host should refill them (continuous batching), so the
  host only intervenes between chunks: never per token.

The KV cache ``[L, slots, S, K, hd]`` (``[L, slots, K, S, hd]`` on CPU: ``KVCache.heads_major``) is preallocated
once per call (S = bucketed prompt length + max_new_tokens + forced-suffix length), sharded by its logical axes
(``KVCache.axes``) through the model's ShardingRules and donated to every call, as is the per-slot state.
Randomness is ``fold_in(fold_in(fold_in(key(seed), prompt), sample), step)``, so a sample does not depend on batch
composition or slot placement.

Stop token ids (eos by default) are checked on device; stop strings are checked on the host between chunks
on the decoded text (the row is then truncated at the token that completes the string).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from rrm_jax.core.api import Model, bucket
from rrm_jax.core.distributed import to_host
from rrm_jax.core.progress import Progress
from rrm_jax.sampler.config import SamplingConfig  # also the old import path: rrm_jax.sampler.scheduler
from rrm_jax.sampler.loop import BUDGET, LENGTH, NEVER, STOP, WILD, LoopShape, SamplerLoop, SamplingParams
from rrm_jax.sampler.prefill import PREFILL_CHUNK, PREFILL_ROWS, Task, assign, prefill_call, window

_REASONS = {STOP: "stop", LENGTH: "length", BUDGET: "budget"}


@dataclasses.dataclass
class Completion:
    prompt_index: int
    sample_index: int
    token_ids: list[int]
    text: str
    logprobs: np.ndarray  # [num_tokens] log-prob of each chosen token (temperature 1, unfiltered)
    finish_reason: str  # "stop" | "length" | "budget"
    num_tokens: int
    probe_logprobs: np.ndarray | None = None  # [num_tokens, len(probe_token_ids)]
    forced_at: int | None = None  # index in token_ids where the forced suffix starts (budget)


@dataclasses.dataclass
class GenerateStats:
    """What one ``generate`` call did (``generate(..., return_stats=True)``; tests assert on these,
    benchmarks read the timings)."""

    rows: int = 0  # slots decoding at once
    cache_slots: int = 0  # S
    prefill_calls: int = 0
    prefill_rows: int = 0  # prompts run through the model (n samples share one)
    prefill_tokens: int = 0  # real prompt tokens prefilled
    prefill_positions: int = 0  # token positions computed by prefill (real + padding)
    prefill_waits: int = 0  # most prefill calls in a row that running rows waited for (continuous: <= max_stall)
    decode_chunks: int = 0
    decode_steps: int = 0  # while-loop iterations (each = one token for every live slot)
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


# ------------------------------------------------------------------------------------------ host side
def _encode(tokenizer, text: str, field: str) -> tuple[int, ...]:
    if tokenizer is None:
        raise ValueError(f"{field}={text!r} is a string but the model has no tokenizer: pass token ids")
    return tuple(int(t) for t in tokenizer.encode(text, add_special_tokens=False))


def _token_seq(tokenizer, value, field: str, single_token: bool = False) -> tuple[int, ...]:
    if not isinstance(value, str):
        return tuple(int(t) for t in value)
    if single_token and tokenizer is not None:
        tid = tokenizer.convert_tokens_to_ids(value)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None) and tid >= 0:
            return (tid,)
    return _encode(tokenizer, value, field)


def _eos_ids(model: Model) -> set[int]:
    out = set()
    for e in (getattr(model.tokenizer, "eos_token_id", None), model.config.eos_token_id):
        if isinstance(e, int):
            out.add(e)
        elif isinstance(e, (list, tuple)):
            out.update(int(x) for x in e)
    return out


def _prompt_ids(model: Model, prompts, budget_room: int, max_new: Sequence[int]) -> list[np.ndarray]:
    cfg = model.config
    out = []
    for i, p in enumerate(prompts):
        ids = np.asarray(_encode(model.tokenizer, p, f"prompts[{i}]") if isinstance(p, str) else list(p))
        if ids.size == 0:
            raise ValueError(f"prompts[{i}] is empty")
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"prompts[{i}] must be a string or a flat sequence of token ids")
        if ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise ValueError(f"prompts[{i}] holds token ids outside [0, {cfg.vocab_size})")
        if ids.size + max_new[i] + budget_room > cfg.max_position_embeddings:
            raise ValueError(
                f"prompts[{i}] has {ids.size} tokens; with max_new_tokens={max_new[i]} (+{budget_room} forced) it "
                f"exceeds the context (max_position_embeddings={cfg.max_position_embeddings})"
            )
        out.append(ids.astype(np.int32))
    return out


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
) -> list[Completion] | tuple[list[Completion], GenerateStats]:
    """Sample ``config.n`` completions per prompt, ordered prompt-major ([p0 s0, p0 s1, ..., p1 s0, ...]).

    ``continuous=False`` is the static path (a new group of requests starts only when every slot is done),
    kept for comparison. ``max_new_tokens`` optionally overrides the limit per prompt. ``refill_min`` is how
    many finished slots make the decode loop hand back for a refill (default ``slots // 4``).
    ``return_stats=True`` returns ``(completions, GenerateStats)`` (``stats``, if given, is the one filled).
    ``unroll_layers`` picks the decode's layer form (None: unrolled on CPU, the model's scan elsewhere).
    Prompts are prefilled in chunks of ``prefill_chunk`` tokens, up to ``prefill_rows`` prompts per call,
    interleaved with decode chunks of at most ``prefill_steps`` steps while prompts wait (running rows wait for
    at most ``max_stall`` prefill calls in a row).
    """
    if not isinstance(config, SamplingConfig):
        raise TypeError(f"config must be a SamplingConfig, got {type(config).__name__}")
    if isinstance(prompts, (str, bytes)) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of strings or token-id lists")
    tok = model.tokenizer
    limits = [config.max_new_tokens] * len(prompts) if max_new_tokens is None else [int(x) for x in max_new_tokens]
    if len(limits) != len(prompts) or min(limits) < 1:
        raise ValueError("max_new_tokens (per prompt) must give one value >= 1 per prompt")
    budget = -1 if config.max_think_tokens is None else config.max_think_tokens
    suffix = _token_seq(tok, config.forced_suffix, "forced_suffix") if budget >= 0 else ()
    think_end = _token_seq(tok, config.think_end, "think_end", single_token=True) if budget >= 0 else ()
    if budget >= 0 and not suffix:
        raise ValueError("SamplingConfig.forced_suffix is empty but max_think_tokens is set")
    ids = _prompt_ids(model, prompts, len(suffix), limits)
    stops = set(int(t) for t in config.stop_token_ids) | (_eos_ids(model) if config.add_eos_stop else set())
    if config.stop_strings and tok is None:
        raise ValueError("SamplingConfig.stop_strings needs a model with a tokenizer")
    scap = bucket(len(suffix), minimum=8)
    te_window = bucket(len(think_end), minimum=4)
    probes = tuple(int(t) for t in config.probe_token_ids)
    if any(not 0 <= t < model.config.vocab_size for t in probes + tuple(stops)):
        raise ValueError(f"SamplingConfig.probe_token_ids / stop_token_ids must lie in [0, {model.config.vocab_size})")
    pad = lambda xs, n, fill, left=False: np.asarray(
        ([fill] * (n - len(xs)) + list(xs)) if left else (list(xs) + [fill] * (n - len(xs))), np.int32
    )
    n_stops = bucket(len(stops), minimum=4)
    sampling = SamplingParams(
        temperature=np.float32(config.temperature),
        top_p=np.float32(config.top_p),
        min_p=np.float32(config.min_p),
        budget=np.int32(budget),
        suffix=pad(suffix, scap, 0),
        suffix_len=np.int32(len(suffix)),
        think_end=pad(think_end, te_window, WILD, left=True) if think_end else np.full((te_window,), NEVER, np.int32),
        stops=pad(sorted(stops), n_stops, NEVER),
        probes=np.asarray(probes, np.int32),
    )
    m = max(limits) + (scap if suffix else 0)
    s = bucket(max(len(x) for x in ids)) + m
    requests = [(p, q) for p in range(len(prompts)) for q in range(config.n)]
    mult = model.batch_multiple()
    b = min(config.max_slots, bucket(len(requests), minimum=1))
    b = -(-b // mult) * mult
    shape = LoopShape(
        slots=b,
        cache_len=s,
        max_out=m,
        top_k=int(config.top_k),
        suffix_cap=scap,
        window=te_window,
        n_stops=n_stops,
        n_probes=len(probes),
    )
    loop = SamplerLoop.for_model(model, shape, unroll_layers)
    sampling = loop.place(sampling)
    st = stats if stats is not None else GenerateStats()
    st.rows, st.cache_slots = b, s
    refill_min = max(1, b // 4) if refill_min is None else max(1, refill_min)

    state = loop.init_state()
    weights = loop.weights(model.state)
    queue = deque(requests)
    occupant: list[tuple[int, int] | None] = [None] * b
    live = [False] * b  # decoding on device (a reserved slot waits for its prompt's prefill first)
    pending: list[Task] = []
    stop_checked = [0] * b
    results: dict[tuple[int, int], Completion] = {}
    kill = np.zeros((b,), bool)
    counts = np.zeros((b,), np.int64)  # tokens chosen per slot, as of the last chunk
    tb = s - m
    chunk = max(1, min(prefill_chunk, tb))
    prefill_rows = max(1, min(prefill_rows, b))
    stalled = 0
    bar = Progress("generating", len(requests), rate="seq", enabled=progress)
    with bar:
        while queue or pending or any(live):
            free = [r for r in range(b) if occupant[r] is None]
            if queue and free and (continuous or len(free) == b):
                pending += assign(queue, free, occupant)
                for r in free:  # a refilled slot starts fresh (a pending kill was for its previous request)
                    stop_checked[r] = 0
                    kill[r] = False
                    counts[r] = 1
            if pending:
                state = prefill_call(
                    loop, model, config, sampling, ids, limits, pending, chunk, prefill_rows, state, st, live
                )
            n_live, waiting = sum(live), sum(len(t.slots) for t in pending)
            # Prefill and decode interleave: while prompts wait, running rows decode only after `max_stall`
            # prefill calls in a row. A decode step costs about the same with few rows as with all, so rows
            # that join sooner share steps (a fresh batch finishes its prompts first), while a long prompt
            # arriving mid-run never holds running rows back for long.
            if not n_live:
                continue
            if waiting and (not continuous or stalled < max_stall):
                stalled += 1
                st.prefill_waits = max(st.prefill_waits, stalled)
                continue
            stalled = 0
            n_done = b - n_live
            threshold = n_done + min(len(queue), refill_min) if (continuous and queue) else b + 1
            # between two prefill calls only a few steps: a decode step costs about the same with few rows as
            # with all, so rows still prefilling should join soon
            n_run = min(chunk_steps, prefill_steps) if waiting else chunk_steps
            t0 = time.perf_counter()
            # the longest live row's prompt, tokens so far and this chunk's steps: slots past it hold nothing
            extent = max(len(ids[occupant[r][0]]) + int(counts[r]) for r in range(b) if live[r]) + n_run
            span = window(extent, chunk, s)
            n_steps, thresh = loop.place((np.int32(n_run), np.int32(threshold)))
            state, steps = loop.decode(
                model.state, weights, state, sampling, loop.place_rows(kill), n_steps, thresh, window=span
            )
            host = to_host({"done": state.done, "count": state.count, "steps": steps})
            counts = np.array(host["count"])
            st.decode_seconds += time.perf_counter() - t0
            st.decode_chunks += 1
            st.decode_steps += int(host["steps"])
            kill[:] = False
            running = [r for r in range(b) if live[r]]
            finished = [r for r in running if host["done"][r]]
            if not finished and not config.stop_strings:
                continue
            arrays = to_host({k: getattr(state, k) for k in ("out_tok", "out_lp", "out_probe", "reason", "forced_at")})
            for r in running:
                n_tok = int(host["count"][r])
                hit = None
                if config.stop_strings:
                    hit = _stop_string_hit(tok, arrays["out_tok"][r], stop_checked[r], n_tok, config.stop_strings)
                    stop_checked[r] = n_tok
                if hit is None and not host["done"][r]:
                    continue
                if hit is not None:
                    n_tok, text = hit
                    reason = "stop"
                    if not host["done"][r]:
                        kill[r] = True
                else:
                    reason, text = _REASONS[int(arrays["reason"][r])], None
                fa = int(arrays["forced_at"][r])
                fa = fa if 0 <= fa < n_tok else None  # a stop string may end the row before the budget did
                if fa is not None:
                    reason = "budget"
                c = _completion(occupant[r], arrays, r, n_tok, reason, fa, text, tok, stops, bool(probes))
                results[occupant[r]] = c
                st.generated_tokens += c.num_tokens
                occupant[r] = None
                live[r] = False
                bar.update(advance=1)
    outs = [results[r] for r in requests]
    return (outs, st) if return_stats else outs


def _stop_string_hit(tok, out_tok, checked: int, n_tok: int, stop_strings) -> tuple[int, str] | None:
    """The shortest prefix (>= checked) whose decoded text contains a stop string -> (n tokens, text)."""
    toks = [int(t) for t in out_tok[:n_tok]]
    full = tok.decode(toks, skip_special_tokens=False)
    if not any(s in full for s in stop_strings):
        return None
    for j in range(max(1, checked), n_tok + 1):
        text = tok.decode(toks[:j], skip_special_tokens=False)
        ends = [text.index(s) + len(s) for s in stop_strings if s in text]
        if ends:
            return j, text[: min(ends)]
    return None


def _completion(req, arrays, r, n_tok, reason, forced_at, text, tok, stops, probed: bool) -> Completion:
    toks = [int(t) for t in arrays["out_tok"][r, :n_tok]]
    if text is None:
        body = toks[:-1] if (reason == "stop" or reason == "budget") and toks and toks[-1] in stops else toks
        text = tok.decode(body, skip_special_tokens=False) if tok is not None else ""
    return Completion(
        prompt_index=req[0],
        sample_index=req[1],
        token_ids=toks,
        text=text,
        logprobs=np.asarray(arrays["out_lp"][r, :n_tok], np.float32),
        finish_reason=reason,
        num_tokens=n_tok,
        probe_logprobs=np.asarray(arrays["out_probe"][r, :n_tok], np.float32) if probed else None,
        forced_at=forced_at,
    )
