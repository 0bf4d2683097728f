"""The sampler's device loop: a static, hashable :class:`SamplerLoop` and the one :class:`SamplingState` it carries.

``SamplerLoop.prefill`` (advance up to R prompts by one fixed-size chunk each, at their own cache offsets;
a prompt's last chunk copies its cache rows into all its samples' slots and chooses their first token) and ``SamplerLoop.decode`` (a ``lax.while_loop`` of up to ``n_steps``
single-token steps for every slot, leaving early when enough slots finished for the host to refill them) are
``jax.jit``-ted with the loop object as a static argument, so jax's own compile cache keys on it; the loop
holds the model's graph, mesh and shapes, never parameters. The state is donated to both.

Traced values never recompile: each request's own sampling knobs (temperature, top-p, min-p, thinking budget,
stop ids, seed, token limit) are per-slot arrays, :class:`SlotParams`, set when its prompt's last chunk fills its
slots, so requests with different settings share one batch; what every slot shares (the forced suffix, think_end,
probe ids) is :class:`LoopParams`. Everything that sets a shape is in :class:`LoopShape`. Host-side scheduling
(which request goes to which slot, stop strings, building completions) is :mod:`rrm_jax.sampler.engine`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rrm_jax.core.config import ModelConfig
from rrm_jax.core.kv_cache import KVCache
from rrm_jax.core.sharding import ShardingRules
from rrm_jax.sampler import decode as backends
from rrm_jax.sampler.decode import UnrolledWeights
from rrm_jax.sampler.planner import LoopShape
from rrm_jax.sampler.sampling import sample

STOP, LENGTH, BUDGET = 1, 2, 3  # finish reasons
WILD, NEVER = -2, -3  # think_end padding that matches anything / a stop id that matches nothing


@struct.dataclass
class LoopParams:
    """What every slot shares, traced (changing it never recompiles)."""

    suffix: jax.Array  # [suffix_cap] forced once a slot's thinking budget runs out
    suffix_len: jax.Array
    think_end: jax.Array  # [window], left-padded with WILD; all NEVER when unused
    probes: jax.Array  # [n_probes]


@struct.dataclass
class SlotParams:
    """Each slot's request settings (leading axis = slot), traced: requests with their own settings share a batch."""

    temperature: jax.Array  # [B] 0 = greedy
    top_p: jax.Array  # [B]
    min_p: jax.Array  # [B]
    budget: jax.Array  # [B] thinking budget; -1 = none
    limit: jax.Array  # [B] max_new_tokens
    seed: jax.Array  # [B] the request's seed (its samples' keys fold in prompt and sample index)
    stops: jax.Array  # [B, n_stops] stop token ids, padded with NEVER

    @classmethod
    def empty(cls, rows: int, n_stops: int) -> SlotParams:
        """Settings of empty slots, as host arrays: the device state starts from them and each prefill call's
        table of dest slots is filled in over a copy."""
        f32 = lambda v: np.full((rows,), v, np.float32)
        i32 = lambda v: np.full((rows,), v, np.int32)
        return cls(f32(1.0), f32(1.0), f32(0.0), i32(-1), i32(0), i32(0), np.full((rows, n_stops), NEVER, np.int32))


@struct.dataclass
class PrefillChunk:
    """One chunked-prefill call: R prompts each advance by up to C tokens, written at their own cache offset.

    A prompt is built in one slot row (``row``) over as many calls as it has chunks; the call that feeds its
    last chunk (``final``) also copies the prompt's cache to every slot of its samples (``dest``/``src``: n
    samples share ONE prefill) and chooses their first tokens.
    """

    tokens: jax.Array  # [R, C] each row's next chunk, right-padded
    lens: jax.Array  # [R] real tokens in the chunk (0: idle row)
    start: jax.Array  # [R] prompt tokens already in the row's cache (the chunk's offset)
    home: jax.Array  # [R] slot row the prompt is built in (its cache so far is read from there)
    row: jax.Array  # [R] where the row's cache goes back: ``home``, or B (dropped) when final (goes via dest)
    dest: jax.Array  # [B] slot each finished sample fills; B = unused
    src: jax.Array  # [B] the chunk row (0..R-1) whose prompt it receives
    prompt: jax.Array  # [B] prompt index (folded into the row's key)
    sample: jax.Array  # [B] sample index (folded into the row's key)
    params: SlotParams  # [B] the settings of the request each dest slot receives


@struct.dataclass
class SamplingState:
    """The KV cache and every per-slot array (leading axis = slot); ``cache`` is None for bare slot rows."""

    cache: KVCache | None
    tok: jax.Array  # [B] last chosen token (fed at the next step)
    count: jax.Array  # [B] tokens chosen so far
    params: SlotParams  # the request's settings, per slot
    done: jax.Array  # [B] bool (empty slots are done)
    reason: jax.Array  # [B] STOP / LENGTH / BUDGET
    forced_at: jax.Array  # [B] -1, or the count at which the forced suffix started
    closed: jax.Array  # [B] bool: think_end seen
    window: jax.Array  # [B, W] last W chosen tokens (multi-token stop / think_end matching)
    key: jax.Array  # [B, ...] uint32 key data of the request's base key
    out_tok: jax.Array  # [B, M]
    out_lp: jax.Array  # [B, M]
    out_probe: jax.Array  # [B, M, P]

    @classmethod
    def empty(cls, shape: LoopShape, rows: int, cache: KVCache | None) -> SamplingState:
        m, p = shape.max_out, shape.n_probes
        return cls(
            cache=cache,
            tok=jnp.zeros((rows,), jnp.int32),
            count=jnp.zeros((rows,), jnp.int32),
            params=SlotParams.empty(rows, shape.n_stops),
            done=jnp.ones((rows,), bool),
            reason=jnp.zeros((rows,), jnp.int32),
            forced_at=jnp.full((rows,), -1, jnp.int32),
            closed=jnp.zeros((rows,), bool),
            window=jnp.full((rows, shape.window), -1, jnp.int32),
            key=jnp.zeros((rows, *_key_data_shape()), jnp.uint32),
            out_tok=jnp.zeros((rows, m), jnp.int32),
            out_lp=jnp.zeros((rows, m), jnp.float32),
            out_probe=jnp.zeros((rows, m, p), jnp.float32),
        )


def _key_data_shape() -> tuple[int, ...]:
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape


def _advance(
    shape: LoopShape, sp: LoopParams, st: SamplingState, logits: jax.Array, active: jax.Array
) -> SamplingState:
    """Choose one token per active slot from float32 logits [B, V] and do all the bookkeeping."""
    b, m = st.out_tok.shape
    p = st.params
    lse = jax.nn.logsumexp(logits, axis=-1)
    keys = jax.vmap(lambda kd, c: jax.random.fold_in(jax.random.wrap_key_data(kd), c))(st.key, st.count)
    sampled = sample(logits, keys, temperature=p.temperature, top_k=shape.top_k, top_p=p.top_p, min_p=p.min_p)
    start = active & (p.budget >= 0) & (st.forced_at < 0) & ~st.closed & (st.count == p.budget)
    forced_at = jnp.where(start, st.count, st.forced_at)
    fpos = st.count - forced_at
    in_force = (forced_at >= 0) & (fpos < sp.suffix_len)
    tok = jnp.where(in_force, sp.suffix[jnp.clip(fpos, 0, shape.suffix_cap - 1)], sampled)
    rows = jnp.arange(b)
    col = jnp.where(active, st.count, m)  # inactive slots write out of range (dropped)
    lp = jnp.take_along_axis(logits, tok[:, None], axis=-1)[:, 0] - lse
    out_tok = st.out_tok.at[rows, col].set(tok, mode="drop")
    out_lp = st.out_lp.at[rows, col].set(lp, mode="drop")
    out_probe = st.out_probe
    if shape.n_probes:
        out_probe = out_probe.at[rows, col].set(logits[:, sp.probes] - lse[:, None], mode="drop")
    window = jnp.where(active[:, None], jnp.concatenate([st.window[:, 1:], tok[:, None]], axis=1), st.window)
    te = sp.think_end[None]
    closed = st.closed | (active & jnp.all((window == te) | (te == WILD), axis=-1))
    count = st.count + active.astype(jnp.int32)
    stop_hit = active & ~in_force & jnp.any(tok[:, None] == p.stops, axis=-1)
    limit = p.limit + jnp.where(forced_at >= 0, sp.suffix_len, 0)
    # a budget equal to the limit forces its suffix at the next step instead of the length ending the sample
    forcing = (p.budget >= 0) & (forced_at < 0) & ~closed & (count == p.budget)
    fin = active & (stop_hit | ((count >= limit) & ~forcing))
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


def _cache_prefix(cache: KVCache, n: int) -> KVCache:
    head = cache.index(slots=slice(None, n))
    return cache.replace(k=cache.k[head], v=cache.v[head], valid=cache.valid[:, :n])


def _put_prefix(cache: KVCache, prefix: KVCache) -> KVCache:
    z = jnp.int32(0)
    return cache.replace(
        k=jax.lax.dynamic_update_slice(cache.k, prefix.k, (z,) * 5),
        v=jax.lax.dynamic_update_slice(cache.v, prefix.v, (z,) * 5),
        valid=jax.lax.dynamic_update_slice(cache.valid, prefix.valid, (z, z)),
        length=prefix.length,
    )


def _write_rows(
    cache: KVCache, buf: jax.Array, sub: jax.Array, rows: jax.Array, srcs: jax.Array, window: int
) -> jax.Array:
    """Slot row ``rows[i]``'s first ``window`` slots of ``buf`` (k or v of ``cache``) = ``sub``'s row ``srcs[i]``
    (rows == B dropped), a layer at a time.

    All layers in one scatter gather ``sub[:, srcs]`` first, an [L, R + B, window, K, hd] temporary as large as
    the cache (`rrm-jax plan rrm-32b --topology v5p-64`: 51 GiB per chip, its peak at 94.6 of 95); a layer at a
    time it is 1/L of that.
    """
    at = cache.index(rows, slice(None, window))[1:]

    def layer(i, buf):
        return buf.at[(i,) + at].set(sub[i, srcs], mode="drop")

    return jax.lax.fori_loop(0, buf.shape[0], layer, buf)


_SPLIT: dict = {}  # SamplerLoop.weights' one kept split: loop -> (weak refs to the parameter leaves, the split)


@dataclasses.dataclass(frozen=True)
class SamplerLoop:
    """The compiled prefill/decode for one (model graph, mesh, rules, shape, cache dtype, layer form).

    Hashable and static: build one per generate call (cheap); equal loops share jax's compiled functions,
    so models from ``with_state(...)`` reuse them. ``unroll_layers`` runs decode over per-layer weights
    (the decode backends of :mod:`rrm_jax.sampler.decode`, which :meth:`for_model` chooses: unrolled on CPU and
    GPU meshes, where it was measured faster, the model's scan on TPUs).
    """

    graphdef: Any
    config: ModelConfig
    mesh: Mesh
    rules: ShardingRules
    shape: LoopShape
    cache_dtype: Any
    unroll_layers: bool  # also picks the heads-major cache (KVCache.heads_major): the CPU decode form
    # decode's matmuls through rrm_jax.core.cpu_kernel (packed float32 weights); an FFI call has no sharding rule,
    # so only on a one-device mesh
    cpu_kernel: bool = False

    @classmethod
    def for_model(
        cls, model, shape: LoopShape, unroll_layers: bool | None = None, cpu_kernel: bool | None = None
    ) -> SamplerLoop:
        unroll_layers, cpu_kernel = backends.choose(model, unroll_layers, cpu_kernel)
        return cls(
            model.graphdef,
            model.config,
            model.mesh,
            model.rules,
            shape,
            jnp.dtype(model.module.compute_dtype),
            unroll_layers,
            cpu_kernel,
        )

    def __hash__(self) -> int:
        # jit hashes its static arguments on every call; hashing the graphdef costs ~70 us, so once per loop
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", h)
        return h

    # -- placement -----------------------------------------------------------------------------------
    def state_shardings(self) -> SamplingState:
        b, s = self.shape.slots, self.shape.cache_len
        rules, mesh = self.rules, self.mesh
        zeros = jax.eval_shape(self._zero_cache)
        cache = zeros.replace(
            k=rules.sharding(mesh, zeros.axes, zeros.k.shape),
            v=rules.sharding(mesh, zeros.axes, zeros.v.shape),
            valid=rules.sharding(mesh, ("batch", "cache_sequence"), (b, s)),
            length=rules.sharding(mesh, ("batch",), (b,)),
        )
        rows = jax.eval_shape(lambda: SamplingState.empty(self.shape, b, None))
        per_row = lambda x: rules.sharding(mesh, ("batch",) + (None,) * (x.ndim - 1), x.shape)
        return jax.tree.map(per_row, rows).replace(cache=cache)

    def place(self, tree):
        """Host values onto the mesh, replicated. Explicit: a numpy argument may not carry a sharding that
        spans hosts."""
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def place_rows(self, x):
        """A host [B] array onto the mesh, sharded like the state's per-slot arrays."""
        return jax.device_put(x, self.rules.sharding(self.mesh, ("batch",), (self.shape.slots,)))

    def _constrain(self, state: SamplingState) -> SamplingState:
        return jax.lax.with_sharding_constraint(state, self.state_shardings())

    # -- compiled --------------------------------------------------------------------------------------
    def _zero_cache(self) -> KVCache:
        return KVCache.zeros(
            self.config, self.shape.slots, self.shape.cache_len, self.cache_dtype, heads_major=self.unroll_layers
        )

    @functools.partial(jax.jit, static_argnums=0)
    def init_state(self) -> SamplingState:
        return self._constrain(SamplingState.empty(self.shape, self.shape.slots, self._zero_cache()))

    @functools.partial(jax.jit, static_argnums=0, static_argnames="window", donate_argnames="state")
    def prefill(self, params, state: SamplingState, batch: PrefillChunk, sp: LoopParams, *, window: int):
        """Feed every used row of ``batch`` its next chunk; finished prompts fill their samples' slots.

        Each row's cache prefix (the first ``window`` slots, which hold all its prompt so far plus this chunk)
        is gathered out of the slot cache, the chunk runs through the model at offset ``start`` (positions,
        causal mask and cache writes per row, so rows advance independently), and the prefix goes back. The
        computed positions are R x C whatever the prompts' lengths: padding costs < C per prompt, not
        ``bucket(longest) - len`` per prompt.
        """
        module = nnx.merge(self.graphdef, params)
        b, s = self.shape.slots, self.shape.cache_len
        r, c = batch.tokens.shape
        cache = state.cache
        take = jnp.clip(batch.home, 0, b - 1)
        prefix = jnp.arange(window)[None] < batch.start[:, None]
        # The chunk arrives replicated (place); split its rows over the batch axes, or every device runs every
        # prompt (`rrm-jax plan` found a 32B judge's prefill needing 182 GiB per chip that way)
        split = lambda x, axes: jax.lax.with_sharding_constraint(x, self.rules.sharding(self.mesh, axes, x.shape))
        rows_of = lambda x: split(x, ("batch",) + (None,) * (x.ndim - 1))
        head = cache.index(take, slice(None, window))
        sub = cache.replace(
            k=split(cache.k[head], cache.axes),
            v=split(cache.v[head], cache.axes),
            valid=rows_of(prefix),
            length=batch.start,
        )
        mask = rows_of(jnp.arange(c)[None] < batch.lens[:, None])
        h, sub = module(rows_of(batch.tokens), None, mask, sub, return_hidden=True)
        logits = module.logits_from_hidden(h[jnp.arange(r), jnp.maximum(batch.lens - 1, 0)])
        # in-progress rows keep their prefix; finished prompts go to every sample slot (their own row included)
        rows = jnp.concatenate([batch.row, batch.dest])
        srcs = jnp.concatenate([jnp.arange(r), batch.src])
        n = batch.start + batch.lens
        # each written slot row's new length; the masks follow elementwise (a scatter of [rows, S] masks ran out
        # of a TPU fusion's scoped VMEM in `rrm-jax plan rrm-7b --topology v5p-16`)
        filled = jnp.full((b,), -1, jnp.int32).at[rows].set(n[srcs], mode="drop")
        written = filled >= 0
        cache = cache.replace(
            k=_write_rows(cache, cache.k, sub.k, rows, srcs, window),
            v=_write_rows(cache, cache.v, sub.v, rows, srcs, window),
            valid=jnp.where(written[:, None], jnp.arange(s)[None] < filled[:, None], cache.valid),
            length=jnp.where(written, filled, cache.length),
        )
        dest, src = batch.dest, batch.src
        fold = lambda s, p, q: jax.random.key_data(jax.random.fold_in(jax.random.fold_in(jax.random.key(s), p), q))
        keys = jax.vmap(fold)(batch.params.seed, batch.prompt, batch.sample)
        fresh = SamplingState.empty(self.shape, dest.shape[0], None)
        fresh = fresh.replace(done=jnp.zeros_like(fresh.done), key=keys, params=batch.params)
        fresh = _advance(self.shape, sp, fresh, logits[src], dest < b)
        out = jax.tree.map(lambda a, f: a.at[dest].set(f, mode="drop"), state.replace(cache=None), fresh)
        return self._constrain(out.replace(cache=cache))

    @functools.partial(jax.jit, static_argnums=0, donate_argnames="state")
    def share_prefix(self, state: SamplingState, src, dst, length) -> SamplingState:
        """Row ``dst[i]``'s first ``length[i]`` cache slots = row ``src[i]``'s (``dst == B``: unused entry).

        A prompt that starts with tokens another row already prefilled (a tournament's shared system prompt,
        query and first response) takes their keys and values instead of computing them: causal attention makes
        a position's KV depend on the tokens up to it only. A layer at a time, as :func:`_write_rows`.
        """
        cache = state.cache
        b, s = self.shape.slots, self.shape.cache_len
        keep = jnp.arange(s)[None] < length[:, None]  # [n, S]
        keep = keep[:, None, :, None] if cache.heads_major else keep[:, :, None, None]
        take, own = jnp.clip(src, 0, b - 1), jnp.clip(dst, 0, b - 1)

        def layer(i, buf):
            new = jnp.where(keep, buf[i, take], buf[i, own])
            return buf.at[i, dst].set(new, mode="drop")

        copy = lambda buf: jax.lax.fori_loop(0, buf.shape[0], layer, buf)
        return self._constrain(state.replace(cache=cache.replace(k=copy(cache.k), v=copy(cache.v))))

    @functools.partial(jax.jit, static_argnums=0)
    def split_weights(self, params) -> UnrolledWeights | None:
        """What :meth:`decode` takes as ``weights``: per-layer copies when ``unroll_layers``, else None.

        Split once per generate call, not inside every decode call: that copy of all the weights (2 GB for a
        0.5B model in float32) cost more than the four steps a decode call runs between prefill chunks.
        """
        if not self.unroll_layers:
            return None
        return backends.split_weights(nnx.merge(self.graphdef, params), fused=self.cpu_kernel)

    def weights(self, params) -> UnrolledWeights | None:
        """:meth:`split_weights`, reused while the same parameter arrays come back (an evaluation's many generate
        calls over fixed weights, whatever their shapes; an RL step's new weights miss). One copy is kept beyond a
        call, and it does not keep the parameters it came from alive (weak references)."""
        key = dataclasses.replace(self, shape=None)  # the split does not depend on the shape
        leaves = jax.tree.leaves(params)
        kept = _SPLIT.get(key)
        if kept is not None and len(kept[0]) == len(leaves) and all(r() is x for r, x in zip(kept[0], leaves)):
            return kept[1]
        _SPLIT.clear()  # the old copy goes before the new one is made: at most one at a time
        split = key.split_weights(params)
        if split is not None:
            _SPLIT[key] = ([weakref.ref(x) for x in leaves], split)
        return split

    @functools.partial(jax.jit, static_argnums=0, static_argnames="window", donate_argnames="state")
    def decode(
        self,
        params,
        weights: UnrolledWeights | None,
        state: SamplingState,
        sp: LoopParams,
        kill,
        n_steps,
        threshold,
        *,
        window: int,
    ):
        """Up to ``n_steps`` tokens for every live slot -> (state, steps run). ``weights``: :meth:`split_weights`.

        Slots in ``kill`` end first (the host found a stop string). The loop leaves once ``threshold`` slots
        are done (the host refills them) or all are. Attention covers the first ``window`` cache slots only
        (the host guarantees every live row fits for this chunk): its cost follows the longest live row, not
        the preallocated cache.
        """
        module = nnx.merge(self.graphdef, params)
        b, s = self.shape.slots, self.shape.cache_len
        full = state.cache
        cache = full if window == s else _cache_prefix(full, window)
        if weights is not None:
            cache = cache.per_layer()  # per-layer buffers for the whole loop: no restacking per step
        st = state.replace(cache=cache, done=state.done | kill)

        def cond(c):
            i, st = c
            nd = jnp.sum(st.done)
            return (i < n_steps) & (nd < threshold) & (nd < b)

        def body(c):
            i, st = c
            active = ~st.done
            logits, cache = backends.step(module, st.tok, active, st.cache, weights)
            return i + 1, _advance(self.shape, sp, st.replace(cache=cache), logits, active)

        i, st = jax.lax.while_loop(cond, body, (jnp.int32(0), st))
        cache = st.cache.stacked() if weights is not None else st.cache
        if window < s:
            cache = _put_prefix(full, cache)
        return self._constrain(st.replace(cache=cache)), i
