"""KV-cache sampling: n samples per prompt, continuous batching, thinking budgets.

Two compiled functions do all device work:

- ``prefill`` runs a group of prompts (right-padded to a power-of-two length) through the model once,
  copies each prompt's cache rows into the slots of all its samples (n samples share ONE prefill), resets
  those slots' bookkeeping and chooses their first token.
- ``decode`` runs a ``lax.while_loop`` of up to ``chunk_steps`` single-token steps over all slots. It exits
  early when enough slots have finished that the host should refill them (continuous batching), so the
  host only intervenes between chunks: never per token.

The KV cache ``[L, slots, S, K, hd]`` is preallocated once per call (S = bucketed prompt length +
max_new_tokens + forced-suffix length), sharded by ``CACHE_AXES`` through the model's ShardingRules and
donated to every call, as is the per-slot state. Randomness is ``fold_in(fold_in(fold_in(key(seed),
prompt), sample), step)``, so a sample does not depend on batch composition or slot placement.

Stop token ids (eos by default) are checked on device; stop strings are checked on the host between chunks
on the decoded text (the row is then truncated at the token that completes the string).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections import deque
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from .api import Model, bucket
from .model import CACHE_AXES, KVCache, _layer, rms_norm
from .sampling import sample

STOP, LENGTH, BUDGET = 1, 2, 3
_REASONS = {STOP: "stop", LENGTH: "length", BUDGET: "budget"}


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0.0 -> greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    n: int = 1  # samples per prompt (share ONE prefill)
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()  # the tokenizer's eos is added automatically when add_eos_stop=True
    add_eos_stop: bool = True
    stop_strings: tuple[str, ...] = ()
    max_think_tokens: int | None = None  # thinking budget
    think_end: str | tuple[int, ...] = "</think>"  # a string (tokenized) or token ids
    forced_suffix: str | tuple[int, ...] = "\n</think>\n\n\\boxed{Assistant "  # appended once when the budget runs out
    probe_token_ids: tuple[int, ...] = ()  # record log-probs of these ids at every step (judge soft scores)
    max_slots: int = 32  # continuous-batching slots (rows decoding at once)

    def __post_init__(self):
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 = greedy)"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 = off)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must lie in (0, 1]"),
            ("min_p", 0.0 <= self.min_p < 1.0, "must lie in [0, 1)"),
            ("n", self.n >= 1, "must be >= 1"),
            ("max_slots", self.max_slots >= 1, "must be >= 1"),
            ("max_think_tokens", self.max_think_tokens is None or self.max_think_tokens >= 0, "must be >= 0 or None"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"SamplingConfig.{name}={getattr(self, name)!r}: {why}")
        if any(not s for s in self.stop_strings):
            raise ValueError("SamplingConfig.stop_strings: empty stop string")


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
    """What one ``generate`` call did (tests assert on these; benchmarks read the timings)."""

    rows: int = 0  # slots decoding at once
    cache_slots: int = 0  # S
    prefill_calls: int = 0
    prefill_rows: int = 0  # prompt rows actually run through the model (n samples share one)
    prefill_tokens: int = 0  # real prompt tokens prefilled
    decode_chunks: int = 0
    decode_steps: int = 0  # while-loop iterations (each = one token for every live slot)
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


LAST_STATS = GenerateStats()
# Decode with the layers unrolled over per-layer weights (None: on CPU only, where XLA would otherwise copy
# every layer's weights out of the stacked array at every step; GPUs keep the model's scan).
UNROLL_LAYERS: bool | None = None


# ------------------------------------------------------------------------------------------ device side
@struct.dataclass
class Slots:
    """Per-slot decoding state (leading axis = slot)."""

    tok: jax.Array  # [B] last chosen token (fed at the next step)
    count: jax.Array  # [B] tokens chosen so far
    limit: jax.Array  # [B] max_new_tokens of the request in the slot
    done: jax.Array  # [B] bool (empty slots are done)
    reason: jax.Array  # [B] STOP / LENGTH / BUDGET
    forced_at: jax.Array  # [B] -1, or the count at which the forced suffix started
    closed: jax.Array  # [B] bool: think_end seen
    window: jax.Array  # [B, W] last W chosen tokens (multi-token stop / think_end matching)
    key: jax.Array  # [B, ...] uint32 key data of the request's base key
    out_tok: jax.Array  # [B, M]
    out_lp: jax.Array  # [B, M]
    out_probe: jax.Array  # [B, M, P]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The static shape of a generate call's compiled functions (hashable; few distinct values)."""

    top_k: int
    suffix_cap: int  # forced-suffix buffer length
    window: int  # think_end matching window
    n_stops: int
    n_probes: int


WILD, NEVER = -2, -3  # think_end padding that matches anything / a stop id that matches nothing


@struct.dataclass
class Knobs:
    """Per-call sampling values, traced (changing them never recompiles)."""

    temperature: jax.Array
    top_p: jax.Array
    min_p: jax.Array
    budget: jax.Array  # -1 = no thinking budget
    suffix: jax.Array  # [suffix_cap]
    suffix_len: jax.Array
    think_end: jax.Array  # [window], left-padded with WILD; all NEVER when unused
    stops: jax.Array  # [n_stops], padded with NEVER
    probes: jax.Array  # [n_probes]


def _empty_slots(b: int, m: int, p: int, w: int, key_shape) -> Slots:
    return Slots(
        tok=jnp.zeros((b,), jnp.int32),
        count=jnp.zeros((b,), jnp.int32),
        limit=jnp.zeros((b,), jnp.int32),
        done=jnp.ones((b,), bool),
        reason=jnp.zeros((b,), jnp.int32),
        forced_at=jnp.full((b,), -1, jnp.int32),
        closed=jnp.zeros((b,), bool),
        window=jnp.full((b, w), -1, jnp.int32),
        key=jnp.zeros((b, *key_shape), jnp.uint32),
        out_tok=jnp.zeros((b, m), jnp.int32),
        out_lp=jnp.zeros((b, m), jnp.float32),
        out_probe=jnp.zeros((b, m, p), jnp.float32),
    )


def _advance(spec: _Spec, kn: Knobs, st: Slots, logits: jax.Array, active: jax.Array) -> Slots:
    """Choose one token per active slot from float32 logits [B, V] and do all the bookkeeping."""
    b, m = st.out_tok.shape
    lse = jax.nn.logsumexp(logits, axis=-1)
    keys = jax.vmap(lambda kd, c: jax.random.fold_in(jax.random.wrap_key_data(kd), c))(st.key, st.count)
    sampled = sample(logits, keys, temperature=kn.temperature, top_k=spec.top_k, top_p=kn.top_p, min_p=kn.min_p)
    start = active & (kn.budget >= 0) & (st.forced_at < 0) & ~st.closed & (st.count == kn.budget)
    forced_at = jnp.where(start, st.count, st.forced_at)
    fpos = st.count - forced_at
    in_force = (forced_at >= 0) & (fpos < kn.suffix_len)
    tok = jnp.where(in_force, kn.suffix[jnp.clip(fpos, 0, spec.suffix_cap - 1)], sampled)
    rows = jnp.arange(b)
    col = jnp.where(active, st.count, m)  # inactive slots write out of range (dropped)
    lp = jnp.take_along_axis(logits, tok[:, None], axis=-1)[:, 0] - lse
    out_tok = st.out_tok.at[rows, col].set(tok, mode="drop")
    out_lp = st.out_lp.at[rows, col].set(lp, mode="drop")
    out_probe = st.out_probe
    if spec.n_probes:
        out_probe = out_probe.at[rows, col].set(logits[:, kn.probes] - lse[:, None], mode="drop")
    window = jnp.where(active[:, None], jnp.concatenate([st.window[:, 1:], tok[:, None]], axis=1), st.window)
    te = kn.think_end[None]
    closed = st.closed | (active & jnp.all((window == te) | (te == WILD), axis=-1))
    count = st.count + active.astype(jnp.int32)
    stop_hit = active & ~in_force & jnp.any(tok[:, None] == kn.stops[None], axis=-1)
    limit = st.limit + jnp.where(forced_at >= 0, kn.suffix_len, 0)
    fin = active & (stop_hit | (count >= limit))
    reason = jnp.where(fin, jnp.where(forced_at >= 0, BUDGET, jnp.where(stop_hit, STOP, LENGTH)), st.reason)
    return st.replace(
        tok=jnp.where(active, tok, st.tok),
        count=count,
        done=st.done | fin,
        reason=reason,
        forced_at=forced_at,
        closed=closed,
        window=window,
        out_tok=out_tok,
        out_lp=out_lp,
        out_probe=out_probe,
    )


def _head(module, h: jax.Array) -> jax.Array:
    """Final hidden [B, D] -> float32 logits [B, V] without materialising a transposed embedding."""
    cd = module.compute_dtype
    if module.cfg.tie_word_embeddings:
        return jnp.einsum("bd,vd->bv", h.astype(cd), module.embed[...].astype(cd), preferred_element_type=jnp.float32)
    return jnp.einsum("bd,dv->bv", h.astype(cd), module.lm_head[...].astype(cd), preferred_element_type=jnp.float32)


def _split_layers(module) -> tuple[list[dict[str, jax.Array]], jax.Array]:
    """Per-layer weights and the [D, V] output projection, materialised once, outside the decode loop.

    A tied embedding is transposed here once per chunk: XLA:CPU streams ``h @ W[D, V]`` markedly faster
    than ``h @ E[V, D].T``.
    """
    stacked = module.layers.stacked()
    layers = [{k: v[i] for k, v in stacked.items()} for i in range(module.cfg.num_layers)]
    return jax.lax.optimization_barrier((layers, module.head_weight().astype(module.compute_dtype)))


def _unrolled_step(module, layers, tok, active, cache):
    """One token per row through per-layer weights; the same maths as ``Qwen2.__call__`` with a cache and T=1.

    ``cache`` is (k per layer, v per layer, valid, length). Returns final-normed hidden [B, D] and the cache.
    """
    ks, vs, valid, length = cache
    b, s = valid.shape
    rows, slots = jnp.arange(b)[:, None], length[:, None]
    positions = jnp.sum(valid, axis=1, keepdims=True)  # real tokens so far
    valid = valid.at[rows, slots].set(active[:, None], mode="drop")
    mask = valid[:, None, :] & (jnp.arange(s)[None, None, :] <= slots[:, :, None])
    x = module.embed_tokens(tok[:, None])
    new_k, new_v = [], []
    for p, k, v in zip(layers, ks, vs):
        x, (k, v) = _layer(module.cfg, p, x, positions, mask, (k, v), (rows, slots), module.attention_impl, module.compute_dtype)
        new_k.append(k)
        new_v.append(v)
    h = rms_norm(x, module.final_norm[...], module.cfg.rms_norm_eps)
    return h[:, 0], (tuple(new_k), tuple(new_v), valid, length + 1)


class _Engine:
    """The two compiled functions for one (model graph, mesh, spec, slot count, cache size)."""

    def __init__(self, model: Model, spec: _Spec, b: int, s: int, m: int, cache_dtype):
        self.spec, self.b, self.s, self.m = spec, b, s, m
        cfg, mesh, rules, gd = model.config, model.mesh, model.rules, model.graphdef
        key_shape = jax.random.key_data(jax.random.key(0)).shape
        self.cache_dtype = cache_dtype
        self.key_shape = key_shape
        batch = lambda x: rules.sharding(mesh, ("batch",) + (None,) * (x.ndim - 1), x.shape)
        cache_abs = jax.eval_shape(lambda: KVCache.zeros(cfg, b, s, cache_dtype))
        self.cache_sh = KVCache(
            k=rules.sharding(mesh, CACHE_AXES, cache_abs.k.shape),
            v=rules.sharding(mesh, CACHE_AXES, cache_abs.v.shape),
            valid=rules.sharding(mesh, ("batch", "cache_sequence"), (b, s)),
            length=rules.sharding(mesh, ("batch",), (b,)),
        )
        slots_abs = jax.eval_shape(lambda: _empty_slots(b, m, spec.n_probes, spec.window, key_shape))
        self.slots_sh = jax.tree.map(batch, slots_abs)
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        params_sh = model.state_shardings

        def prefill(state, cache, st, kn, tokens, lens, dest, src, pidx, sidx, limit, seed):
            module = nnx.merge(gd, state)
            pb, tb = tokens.shape
            small = KVCache.zeros(cfg, pb, tb, cache_dtype)
            mask = jnp.arange(tb)[None] < lens[:, None]
            h, small = module(tokens, None, mask, small, return_hidden=True)
            logits = _head(module, h[jnp.arange(pb), lens - 1])
            k = cache.k.at[:, dest, :tb].set(small.k[:, src], mode="drop")
            v = cache.v.at[:, dest, :tb].set(small.v[:, src], mode="drop")
            rows_valid = jnp.zeros((dest.shape[0], s), bool).at[:, :tb].set(small.valid[src])
            cache = KVCache(
                k=k,
                v=v,
                valid=cache.valid.at[dest].set(rows_valid, mode="drop"),
                length=cache.length.at[dest].set(tb, mode="drop"),
            )
            base = jax.random.key(seed)
            keys = jax.vmap(
                lambda p, q: jax.random.key_data(jax.random.fold_in(jax.random.fold_in(base, p), q))
            )(pidx, sidx)
            r = dest.shape[0]
            fresh = _empty_slots(r, m, spec.n_probes, spec.window, key_shape)
            fresh = fresh.replace(done=jnp.zeros((r,), bool), key=keys, limit=limit)
            fresh = _advance(spec, kn, fresh, logits[src], dest < b)
            st = jax.tree.map(lambda a, f: a.at[dest].set(f, mode="drop"), st, fresh)
            return cache, st

        unroll = self.unroll = mesh.devices.flat[0].platform == "cpu" if UNROLL_LAYERS is None else UNROLL_LAYERS

        def decode(state, cache, st, kn, kill, n_steps, threshold, *, window):
            module = nnx.merge(gd, state)
            st = st.replace(done=st.done | kill)
            # Attend over the first `window` slots only (every live row fits for this chunk): attention
            # cost follows the longest live row, not the preallocated cache.
            sub = cache if window == s else KVCache(
                k=cache.k[:, :, :window], v=cache.v[:, :, :window], valid=cache.valid[:, :window], length=cache.length
            )
            if unroll:
                # XLA:CPU copies a layer's weights out of the stacked array on every scan iteration (the
                # dot needs its own buffer), tripling weight traffic in a bandwidth-bound step. So on CPU the
                # layers are split once per chunk and the step runs them unrolled, cache kept per layer.
                layers, head_w = _split_layers(module)
                sub = (tuple(sub.k), tuple(sub.v), sub.valid, sub.length)

            def cond(c):
                i, _, st = c
                nd = jnp.sum(st.done)
                return (i < n_steps) & (nd < threshold) & (nd < b)

            def body(c):
                i, cache, st = c
                active = ~st.done
                if unroll:
                    h, cache = _unrolled_step(module, layers, st.tok, active, cache)
                    logits = jnp.einsum("bd,dv->bv", h.astype(head_w.dtype), head_w, preferred_element_type=jnp.float32)
                else:
                    h, cache = module(st.tok[:, None], None, active[:, None], cache, return_hidden=True)
                    logits = _head(module, h[:, 0])
                st = _advance(spec, kn, st, logits, active)
                return i + 1, cache, st

            i, sub, st = jax.lax.while_loop(cond, body, (jnp.int32(0), sub, st))
            if unroll:
                sub = KVCache(k=jnp.stack(sub[0]), v=jnp.stack(sub[1]), valid=sub[2], length=sub[3])
            if window < s:
                z = jnp.int32(0)
                sub = KVCache(
                    k=jax.lax.dynamic_update_slice(cache.k, sub.k, (z,) * 5),
                    v=jax.lax.dynamic_update_slice(cache.v, sub.v, (z,) * 5),
                    valid=jax.lax.dynamic_update_slice(cache.valid, sub.valid, (z, z)),
                    length=sub.length,
                )
            return sub, st, i

        self.prefill = jax.jit(
            prefill,
            in_shardings=(params_sh, self.cache_sh, self.slots_sh, rep) + (rep,) * 8,
            out_shardings=(self.cache_sh, self.slots_sh),
            donate_argnums=(1, 2),
        )
        self._decode_fn, self._decoders = decode, {}
        self._decode_shardings = (
            (params_sh, self.cache_sh, self.slots_sh, rep, self.slots_sh.done, rep, rep),
            (self.cache_sh, self.slots_sh, rep),
        )
        self.init = jax.jit(
            lambda: (KVCache.zeros(cfg, b, s, cache_dtype), _empty_slots(b, m, spec.n_probes, spec.window, key_shape)),
            out_shardings=(self.cache_sh, self.slots_sh),
        )

    def decode(self, window: int):
        """The decode chunk compiled for an attention window (a power of two, or the whole cache)."""
        if window not in self._decoders:
            ins, outs = self._decode_shardings
            self._decoders[window] = jax.jit(
                functools.partial(self._decode_fn, window=window), in_shardings=ins, out_shardings=outs, donate_argnums=(1, 2)
            )
        return self._decoders[window]


_ENGINES: dict[Any, _Engine] = {}


def _get_engine(model: Model, spec: _Spec, b: int, s: int, m: int, cache_dtype) -> _Engine:
    # Engines depend on the graph, mesh and rules only (not the parameter values), so models from
    # with_state(...) reuse the compiled functions. Only shardings are kept, never parameters.
    key = (model.graphdef, model.mesh, model.rules, spec, b, s, m, jnp.dtype(cache_dtype), UNROLL_LAYERS)
    if key not in _ENGINES:
        if len(_ENGINES) >= 32:
            _ENGINES.pop(next(iter(_ENGINES)))
        _ENGINES[key] = _Engine(model, spec, b, s, m, jnp.dtype(cache_dtype))
    return _ENGINES[key]


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
) -> list[Completion]:
    """Sample ``config.n`` completions per prompt, ordered prompt-major ([p0 s0, p0 s1, ..., p1 s0, ...]).

    ``continuous=False`` is the static path (a new group of requests starts only when every slot is done),
    kept for comparison. ``max_new_tokens`` optionally overrides the limit per prompt. ``refill_min`` is how
    many finished slots make the decode loop hand back for a refill (default ``slots // 4``).
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
    window = bucket(len(think_end), minimum=4)
    probes = tuple(int(t) for t in config.probe_token_ids)
    if any(not 0 <= t < model.config.vocab_size for t in probes + tuple(stops)):
        raise ValueError(f"SamplingConfig.probe_token_ids / stop_token_ids must lie in [0, {model.config.vocab_size})")
    spec = _Spec(top_k=int(config.top_k), suffix_cap=scap, window=window, n_stops=bucket(len(stops), minimum=4), n_probes=len(probes))
    pad = lambda xs, n, fill, left=False: np.asarray(([fill] * (n - len(xs)) + list(xs)) if left else (list(xs) + [fill] * (n - len(xs))), np.int32)
    knobs = Knobs(
        temperature=np.float32(config.temperature),
        top_p=np.float32(config.top_p),
        min_p=np.float32(config.min_p),
        budget=np.int32(budget),
        suffix=pad(suffix, scap, 0),
        suffix_len=np.int32(len(suffix)),
        think_end=pad(think_end, window, WILD, left=True) if think_end else np.full((window,), NEVER, np.int32),
        stops=pad(sorted(stops), spec.n_stops, NEVER),
        probes=np.asarray(probes, np.int32),
    )
    m = max(limits) + (scap if suffix else 0)
    s = bucket(max(len(x) for x in ids)) + m
    requests = [(p, q) for p in range(len(prompts)) for q in range(config.n)]
    mult = model.batch_multiple()
    b = min(config.max_slots, bucket(len(requests), minimum=1))
    b = -(-b // mult) * mult
    engine = _get_engine(model, spec, b, s, m, model.module.compute_dtype)
    st = stats if stats is not None else GenerateStats()
    st.rows, st.cache_slots = b, s
    refill_min = max(1, b // 4) if refill_min is None else max(1, refill_min)

    cache, slots = engine.init()
    queue = deque(requests)
    occupant: list[tuple[int, int] | None] = [None] * b
    stop_checked = [0] * b
    results: dict[tuple[int, int], Completion] = {}
    kill = np.zeros((b,), bool)
    counts = np.zeros((b,), np.int64)  # tokens chosen per slot, as of the last chunk
    tb = s - m
    bar = _progress(progress, len(requests))
    try:
        while queue or any(o is not None for o in occupant):
            free = [r for r in range(b) if occupant[r] is None]
            if queue and free and (continuous or len(free) == b):
                cache, slots = _refill(engine, model, config, knobs, ids, limits, queue, free, occupant, cache, slots, st)
                for r in free:  # a refilled slot starts fresh (a pending kill was for its previous request)
                    stop_checked[r] = 0
                    kill[r] = False
                    counts[r] = 1
            n_free = sum(o is None for o in occupant)
            threshold = n_free + min(len(queue), refill_min) if (continuous and queue) else b + 1
            t0 = time.perf_counter()
            live_count = max((int(counts[r]) for r in range(b) if occupant[r] is not None), default=0)
            window = min(s, bucket(tb + live_count + chunk_steps))
            decode = engine.decode(window)
            cache, slots, steps = decode(model.state, cache, slots, knobs, kill, np.int32(chunk_steps), np.int32(threshold))
            host = jax.device_get({"done": slots.done, "count": slots.count, "steps": steps})
            counts = np.array(host["count"])
            st.decode_seconds += time.perf_counter() - t0
            st.decode_chunks += 1
            st.decode_steps += int(host["steps"])
            kill[:] = False
            live = [r for r in range(b) if occupant[r] is not None]
            finished = [r for r in live if host["done"][r]]
            if not finished and not config.stop_strings:
                continue
            arrays = jax.device_get({k: getattr(slots, k) for k in ("out_tok", "out_lp", "out_probe", "reason", "forced_at")})
            for r in live:
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
                if fa >= 0:
                    reason = "budget"
                c = _completion(occupant[r], arrays, r, n_tok, reason, fa if 0 <= fa < n_tok else None, text, tok, stops, spec)
                results[occupant[r]] = c
                st.generated_tokens += c.num_tokens
                occupant[r] = None
                if bar is not None:
                    bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    global LAST_STATS
    LAST_STATS = st
    return [results[r] for r in requests]


def _refill(engine, model, config, knobs, ids, limits, queue, free, occupant, cache, slots, st):
    """Prefill the next waiting requests into free slots: each distinct prompt is run once."""
    b = engine.b
    take = [queue.popleft() for _ in range(min(len(free), len(queue)))]
    prompts = list(dict.fromkeys(p for p, _ in take))
    tb = engine.s - engine.m  # one prompt length per call: fewer shapes to compile
    pb = bucket(len(prompts), minimum=1)
    tokens = np.zeros((pb, tb), np.int32)
    lens = np.ones((pb,), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(ids[p])] = ids[p]
        lens[i] = len(ids[p])
    dest = np.full((b,), b, np.int32)
    src, pidx, sidx, limit = (np.zeros((b,), np.int32) for _ in range(4))
    where = {p: i for i, p in enumerate(prompts)}
    for j, (r, (p, q)) in enumerate(zip(free, take)):
        dest[j], src[j], pidx[j], sidx[j], limit[j] = r, where[p], p, q, limits[p]
        occupant[r] = (p, q)
    t0 = time.perf_counter()
    cache, slots = engine.prefill(
        model.state, cache, slots, knobs, tokens, lens, dest, src, pidx, sidx, limit, np.int32(config.seed)
    )
    jax.block_until_ready(slots.done)
    st.prefill_seconds += time.perf_counter() - t0
    st.prefill_calls += 1
    st.prefill_rows += len(prompts)
    st.prefill_tokens += int(sum(len(ids[p]) for p in prompts))
    return cache, slots


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


def _completion(req, arrays, r, n_tok, reason, forced_at, text, tok, stops, spec) -> Completion:
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
        probe_logprobs=np.asarray(arrays["out_probe"][r, :n_tok], np.float32) if spec.n_probes else None,
        forced_at=forced_at,
    )


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import Progress

    p = Progress(transient=False)
    p.start()
    return p, p.add_task("generating", total=total)


# ------------------------------------------------------------------------------------------ CLI
def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rrm-jax generate", description="sample completions from a model")
    ap.add_argument("--model", required=True, help="HF checkpoint directory or a models/*.toml preset / path (random init)")
    ap.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable); token ids 'ids:1,2,3' or, without a tokenizer, '1 2 3'")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--min-p", type=float, default=0.0)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-think-tokens", type=int, default=None)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--max-slots", type=int, default=32)
    args = ap.parse_args(argv)
    from pathlib import Path

    from . import api

    dtype = jnp.dtype(args.dtype)
    if Path(args.model).is_dir():
        model = api.load(args.model, dtype=dtype)
    else:
        model = api.init(args.model, dtype=dtype)
    prompts = []
    for p in args.prompt:
        if p.startswith("ids:") or model.tokenizer is None:
            try:
                prompts.append([int(x) for x in p.removeprefix("ids:").replace(",", " ").split()])
            except ValueError:
                print(f"rrm-jax generate: --prompt {p!r}: the model has no tokenizer; pass token ids like '1 2 3'", file=sys.stderr)
                return 2
        else:
            prompts.append(p)
    try:
        cfg = SamplingConfig(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            min_p=args.min_p, n=args.n, seed=args.seed, max_think_tokens=args.max_think_tokens,
            stop_strings=tuple(args.stop), max_slots=args.max_slots,
        )
        outs = generate(model, prompts, cfg, progress=True)
    except ValueError as e:
        print(f"rrm-jax generate: {e}", file=sys.stderr)
        return 2
    for c in outs:
        print(f"--- prompt {c.prompt_index} sample {c.sample_index} ({c.num_tokens} tokens, {c.finish_reason})")
        print(c.text if model.tokenizer is not None else " ".join(map(str, c.token_ids)))
    return 0
