"""The compiled half of the sampler: per-slot state, token bookkeeping, and the prefill/decode functions.

``Engine`` holds the jitted ``prefill`` (run a group of prompts once, copy each prompt's cache rows into
all its samples' slots, choose their first token) and ``decode`` (a ``lax.while_loop`` over up to
``chunk_steps`` single-token steps for every slot, leaving early when enough slots finished for the host
to refill them). Cache and slot state are donated to both. ``rrm_jax.sampler`` drives them from the host.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from .api import Model
from .model import CACHE_AXES, KVCache, decoder_layer, rms_norm
from .sampling import sample

STOP, LENGTH, BUDGET = 1, 2, 3

# Decode with the layers unrolled over per-layer weights (None: on CPU only, where XLA would otherwise copy
# every layer's weights out of the stacked array at every step; GPUs keep the model's scan).
UNROLL_LAYERS: bool | None = None


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
class Spec:
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


def empty_slots(b: int, m: int, p: int, w: int, key_shape) -> Slots:
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


def _advance(spec: Spec, kn: Knobs, st: Slots, logits: jax.Array, active: jax.Array) -> Slots:
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
        x, (k, v) = decoder_layer(module.cfg, p, x, positions, mask, (k, v), (rows, slots), module.attention_impl,
                                  module.compute_dtype)
        new_k.append(k)
        new_v.append(v)
    h = rms_norm(x, module.final_norm[...], module.cfg.rms_norm_eps)
    return h[:, 0], (tuple(new_k), tuple(new_v), valid, length + 1)


class Engine:
    """The two compiled functions for one (model graph, mesh, spec, slot count, cache size)."""

    def __init__(self, model: Model, spec: Spec, b: int, s: int, m: int, cache_dtype):
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
        slots_abs = jax.eval_shape(lambda: empty_slots(b, m, spec.n_probes, spec.window, key_shape))
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
            fresh = empty_slots(r, m, spec.n_probes, spec.window, key_shape)
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
            lambda: (KVCache.zeros(cfg, b, s, cache_dtype), empty_slots(b, m, spec.n_probes, spec.window, key_shape)),
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


_ENGINES: dict[Any, Engine] = {}


def get_engine(model: Model, spec: Spec, b: int, s: int, m: int, cache_dtype) -> Engine:
    # Engines depend on the graph, mesh and rules only (not the parameter values), so models from
    # with_state(...) reuse the compiled functions. Only shardings are kept, never parameters.
    key = (model.graphdef, model.mesh, model.rules, spec, b, s, m, jnp.dtype(cache_dtype), UNROLL_LAYERS)
    if key not in _ENGINES:
        if len(_ENGINES) >= 32:
            _ENGINES.pop(next(iter(_ENGINES)))
        _ENGINES[key] = Engine(model, spec, b, s, m, jnp.dtype(cache_dtype))
    return _ENGINES[key]
