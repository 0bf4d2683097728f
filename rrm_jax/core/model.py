"""The Qwen2 decoder (and its bias-free Llama sibling) in Flax NNX.

Layers are stored stacked (leading ``layers`` axis) and run under ``jax.lax.scan``, so compile time does
not grow with depth. Parameters may be float32 while compute runs in bfloat16; RMSNorm statistics,
RoPE angles, attention softmax and the final logits are always float32.

One attention entry point serves every caller: a forward over a padded batch (``cache=None``) and
prefill/decode steps that read and write a :class:`KVCache` (the sampler drives those through
``__call__`` and :meth:`Qwen2.decode_step`). One output head, :meth:`Qwen2.logits_from_hidden`, serves
the forward, the trainer and the sampler.

This module owns the decoder layer, the KV cache and the module that runs them; the maths they compose (RMSNorm,
RoPE, attention) is :mod:`rrm_jax.core.ops`, and the CPU decode step's matmul kernel and its layer are
:mod:`rrm_jax.core.cpu_kernel`. What the parameters are (shapes, logical axes, initialisers, HF names) is the table
in :mod:`rrm_jax.core.params`; the module creates its weights from it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from rrm_jax.core import cpu_kernel
from rrm_jax.core.config import ModelConfig

# The maths lived here before ops.py; re-exported so old imports work.
from rrm_jax.core.ops import attention, causal_attention, rms_norm, rope, write_kv  # noqa: F401

# PARAM_AXES and the path helpers lived here before the parameter table; re-exported so old imports work.
from rrm_jax.core.params import (  # noqa: F401
    PARAM_AXES,
    PARAMS,
    is_stacked,
    param_axes,
    param_name,
    param_shapes,
)

# Logical axes of the KV cache's k/v buffers, slot-major (TPU/GPU) or heads-major (CPU; see KVCache).
CACHE_AXES = ("layers", "batch", "cache_sequence", "kv_heads", "head_dim")
HEADS_MAJOR_CACHE_AXES = ("layers", "batch", "kv_heads", "cache_sequence", "head_dim")


@struct.dataclass
class KVCache:
    """Preallocated keys/values for every layer plus per-slot bookkeeping.

    ``valid[b, s]`` marks slots that hold a real token (padding is written but never attended to);
    ``length[b]`` is the next slot row ``b`` writes to, so rows may sit at different lengths
    (continuous batching).
    """

    k: jax.Array  # [L, B, S, K, hd], or [L, B, K, S, hd] when heads_major
    v: jax.Array
    valid: jax.Array  # [B, S] bool
    length: jax.Array  # [B] int32
    # XLA:CPU's attention dots read a heads-major cache as it lies, where a slot-major one costs a transposed
    # copy per layer and step (2.5-3.3x the attention time of a B=8 decode step over 1088 slots). On TPU the
    # heads-major scatter of a step's keys made XLA copy the whole cache per step when a chip holds more than
    # one KV head (`rrm-jax plan rrm-7b --topology v5p-16`: 12.7 GiB of decode temporaries), so TPU/GPU keep
    # slot-major, whose layout XLA picks there.
    heads_major: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, slots: int, dtype=jnp.bfloat16, heads_major: bool = False) -> KVCache:
        shape = (cfg.num_layers, batch) + ((cfg.num_kv_heads, slots) if heads_major else (slots, cfg.num_kv_heads))
        shape += (cfg.head_dim,)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, slots), bool),
            length=jnp.zeros((batch,), jnp.int32),
            heads_major=heads_major,
        )

    @property
    def axes(self) -> tuple[str, ...]:
        """Logical axes of the stacked k/v."""
        return HEADS_MAJOR_CACHE_AXES if self.heads_major else CACHE_AXES

    def index(self, rows=slice(None), slots=slice(None)) -> tuple:
        """An index of the stacked k/v taking ``rows`` on the batch axis and ``slots`` on the slot axis."""
        return (slice(None), rows) + ((slice(None), slots) if self.heads_major else (slots,))

    @property
    def slots(self) -> int:
        return self.valid.shape[1]

    def per_layer(self) -> KVCache:
        """k/v as tuples of per-layer arrays (the form :meth:`Qwen2.decode_step` takes with unrolled weights)."""
        return self.replace(k=tuple(self.k), v=tuple(self.v))

    def stacked(self) -> KVCache:
        """Back from :meth:`per_layer` to stacked ``[L, ...]`` k/v."""
        return self.replace(k=jnp.stack(self.k), v=jnp.stack(self.v))


@struct.dataclass
class UnrolledWeights:
    """Per-layer weights and the ``[D, V]`` output projection, split out of the stacked arrays once.

    ``fused``: ``layers`` is one dict of stacked weights in the CPU matmul kernel's packed float32 form
    (:func:`rrm_jax.core.cpu_kernel.fuse_layers`), the head is packed too, and the decode step multiplies through
    :func:`rrm_jax.core.cpu_kernel.matmul` (over a heads-major cache only).
    """

    layers: tuple[dict[str, jax.Array], ...] | dict[str, jax.Array]
    head: jax.Array
    fused: bool = struct.field(pytree_node=False, default=False)


# ------------------------------------------------------------------------------------------ modules
class DecoderLayers(nnx.Module):
    """All decoder layers' weights, stacked on a leading ``layers`` axis (scanned, never unrolled)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        for name, spec in PARAMS.items():
            if spec.stacked and spec.present(cfg):
                setattr(self, name, nnx.Param(spec.initial(cfg, rngs, dtype)))

    def stacked(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in PARAMS if isinstance(getattr(self, name, None), nnx.Param)}


def decoder_layer(cfg: ModelConfig, p: dict, x, positions, mask, kv, write, impl, compute_dtype, heads_major=False):
    """One decoder layer. ``kv`` is (k_layer, v_layer) of the cache or None; returns (x, new_kv)."""
    cd = compute_dtype
    h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("btd,dhk->bthk", h, p["q_proj"].astype(cd))
    k = jnp.einsum("btd,dhk->bthk", h, p["k_proj"].astype(cd))
    v = jnp.einsum("btd,dhk->bthk", h, p["v_proj"].astype(cd))
    if "q_bias" in p:
        q, k, v = q + p["q_bias"].astype(cd), k + p["k_bias"].astype(cd), v + p["v_bias"].astype(cd)
    q = rope(q, positions, cfg.rope_theta)
    k = rope(k, positions, cfg.rope_theta)
    if kv is not None:
        ck, cv = kv = write_kv(*kv, k, v, write, heads_major)
        if not heads_major:
            ck, cv = ck.transpose(0, 2, 1, 3), cv.transpose(0, 2, 1, 3)
        # A cached attention runs XLA's dots: cuDNN's fused kernel is for a sequence attending to itself.
        o = attention(q, ck.astype(cd), cv.astype(cd), mask)
    else:
        o = causal_attention(q, k, v, mask, impl)
    x = x + jnp.einsum("bthk,hkd->btd", o, p["o_proj"].astype(cd))
    h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    g = jnp.einsum("btd,df->btf", h, p["gate_proj"].astype(cd))
    u = jnp.einsum("btd,df->btf", h, p["up_proj"].astype(cd))
    x = x + jnp.einsum("btf,fd->btd", jax.nn.silu(g) * u, p["down_proj"].astype(cd))
    return x, kv


class Qwen2(nnx.Module):
    """Qwen2-family causal LM. ``__call__(tokens, positions, mask, cache)`` -> (logits | hidden, cache)."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        compute_dtype=None,
        attention_impl: str = "xla",
        remat: str = "none",
    ):
        self.cfg = cfg
        self.compute_dtype = jnp.dtype(compute_dtype or param_dtype)
        self.attention_impl = attention_impl
        self.remat = remat
        # In table order, so the RNG draws (and a seed's values) follow the table.
        for name, spec in PARAMS.items():
            if spec.stacked:
                if "layers" not in vars(self):
                    self.layers = DecoderLayers(cfg, rngs=rngs, dtype=param_dtype)
            elif spec.present(cfg):
                setattr(self, name, nnx.Param(spec.initial(cfg, rngs, param_dtype)))

    # -- pieces the trainer and sampler reuse ------------------------------------------------------
    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], tokens, axis=0).astype(self.compute_dtype)

    def head_weight(self) -> jax.Array:
        """[D, V] output projection (the embedding's transpose when tied)."""
        return self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]

    def logits_from_hidden(self, h: jax.Array, head: jax.Array | None = None) -> jax.Array:
        """The output head: final-normed hidden [..., D] -> float32 logits [..., V] (forward, training, decode).

        ``head`` is a [D, V] projection already in the compute dtype (:attr:`UnrolledWeights.head`). Without
        it, one position per row ([B, D]: prefill's last token, a decode step) contracts a tied embedding in
        place, since a transposed copy per step would cost more than the step's matmul; a sequence goes
        through :meth:`head_weight`, whose one transpose is amortised over all its positions.
        """
        cd = self.compute_dtype
        if head is None and h.ndim == 2 and self.cfg.tie_word_embeddings:
            return jnp.einsum("bd,vd->bv", h.astype(cd), self.embed[...].astype(cd), preferred_element_type=jnp.float32)
        w = self.head_weight().astype(cd) if head is None else head
        return jnp.einsum("...d,dv->...v", h.astype(cd), w, preferred_element_type=jnp.float32)

    def unrolled_weights(self, fused: bool = False) -> UnrolledWeights:
        """The weights :meth:`decode_step` runs unrolled over, materialised once outside a decode loop.

        XLA:CPU copies a layer's weights out of the stacked array on every scan iteration (the dot needs its
        own buffer), tripling weight traffic in a bandwidth-bound step; split once, the copies happen once per
        loop. A tied embedding is transposed here too: XLA:CPU streams ``h @ W[D, V]`` markedly faster than
        ``h @ E[V, D].T``. The barrier keeps XLA from sinking the split back into the loop. ``fused`` gives the
        CPU matmul kernel's packed float32 form (:func:`rrm_jax.core.cpu_kernel.fuse_layers`), the head packed too.
        """
        stacked = self.layers.stacked()
        if fused:  # packed by the kernel's own routine, stacked (the kernel indexes the layer), head included
            tied = self.cfg.tie_word_embeddings
            head = cpu_kernel.pack((self.embed if tied else self.lm_head)[...].astype(jnp.float32), transposed=tied)
            layers = cpu_kernel.fuse_layers(self.cfg, {k: v.astype(jnp.float32) for k, v in stacked.items()})
            return UnrolledWeights(layers=layers, head=head, fused=True)
        layers = tuple({k: v[i] for k, v in stacked.items()} for i in range(self.cfg.num_layers))
        layers, head = jax.lax.optimization_barrier((layers, self.head_weight().astype(self.compute_dtype)))
        return UnrolledWeights(layers=layers, head=head)

    def unrolled_logits(self, h: jax.Array, weights: UnrolledWeights) -> jax.Array:
        """The output head over :meth:`unrolled_weights`: final-normed hidden [B, D] -> float32 logits [B, V]."""
        if weights.fused:
            return cpu_kernel.matmul(h, weights.head, self.cfg.vocab_size)
        return self.logits_from_hidden(h, weights.head)

    def decode_step(
        self, tokens: jax.Array, active: jax.Array, cache: KVCache, weights: UnrolledWeights | None = None
    ) -> tuple[jax.Array, KVCache]:
        """One token per row through the decoder and the output head; tokens/active [B] -> (logits [B, V], cache).

        Rows with ``active`` False write a slot that stays invalid (never attended to). Without ``weights`` the
        layers run under ``__call__``'s scan over the stacked cache; with them (from :meth:`unrolled_weights`)
        they run unrolled over a :meth:`KVCache.per_layer` cache, with the same maths.
        """
        if weights is None:
            h, cache = self(tokens[:, None], None, active[:, None], cache, return_hidden=True)
            return self.logits_from_hidden(h[:, 0]), cache
        cfg = self.cfg
        positions = jnp.sum(cache.valid, axis=1, keepdims=True)  # what __call__ derives for one token
        valid, attn_mask, write = _cache_mask(cache, active[:, None])
        x = self.embed_tokens(tokens[:, None])
        ks, vs = [], []
        for i, (k, v) in enumerate(zip(cache.k, cache.v)):
            if weights.fused:
                x, (k, v) = cpu_kernel.decoder_layer(cfg, weights.layers, i, x, positions, attn_mask, (k, v), write)
            else:
                x, (k, v) = decoder_layer(
                    cfg,
                    weights.layers[i],
                    x,
                    positions,
                    attn_mask,
                    (k, v),
                    write,
                    self.attention_impl,
                    self.compute_dtype,
                    cache.heads_major,
                )
            ks.append(k)
            vs.append(v)
        h = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)[:, 0]
        cache = cache.replace(k=tuple(ks), v=tuple(vs), valid=valid, length=cache.length + 1)
        return self.unrolled_logits(h, weights), cache

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
        *,
        return_hidden: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """tokens [B, T]; positions [B, T] (default: count of real tokens so far); mask [B, T] real-token mask.

        Without a cache, query i attends to real keys j <= i of its own row. With a cache the T tokens are
        written at slots ``cache.length + arange(T)`` and attend to every valid slot up to their own.
        Returns float32 logits [B, T, V] (or final-normed hidden states when ``return_hidden``).
        """
        cfg = self.cfg
        b, t = tokens.shape
        if mask is None:
            mask = jnp.ones((b, t), bool)
        mask = mask.astype(bool)
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
            if cache is not None:
                # continue from the number of real tokens already cached
                positions = positions + jnp.sum(cache.valid, axis=1, keepdims=True)
        x = self.embed_tokens(tokens)

        if cache is None:
            causal = jnp.tril(jnp.ones((t, t), bool))
            attn_mask = causal[None] & mask[:, None, :]
            write = None
        else:
            valid, attn_mask, write = _cache_mask(cache, mask)

        params = self.layers.stacked()
        heads_major = cache is not None and cache.heads_major
        layer = lambda x, p, kv: decoder_layer(
            cfg, p, x, positions, attn_mask, kv, write, self.attention_impl, self.compute_dtype, heads_major
        )
        if self.remat == "full":
            layer = jax.checkpoint(layer)
        elif self.remat == "dots":
            layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)

        if cache is None:

            def body(x, p):
                x, _ = layer(x, p, None)
                return x, None

            x, _ = jax.lax.scan(body, x, params)
            new_cache = None
        else:

            def body(carry, p):
                x, ck, cv, i = carry
                x, (lk, lv) = layer(x, p, (ck[i], cv[i]))
                ck = jax.lax.dynamic_update_index_in_dim(ck, lk, i, 0)
                cv = jax.lax.dynamic_update_index_in_dim(cv, lv, i, 0)
                return (x, ck, cv, i + 1), None

            (x, ck, cv, _), _ = jax.lax.scan(body, (x, cache.k, cache.v, jnp.int32(0)), params)
            new_cache = cache.replace(k=ck, v=cv, valid=valid, length=cache.length + t)

        h = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
        if return_hidden:
            return h, new_cache
        return self.logits_from_hidden(h), new_cache


def _cache_mask(cache: KVCache, mask: jax.Array):
    """Where T new tokens [B, T] go in the cache and what they attend to -> (valid, attn mask [B, T, S], write).

    Token t of row b is written at slot ``length[b] + t`` and sees every valid slot up to its own.
    """
    b, t = mask.shape
    slots = cache.length[:, None] + jnp.arange(t)[None]  # [B, T]
    rows = jnp.arange(b)[:, None]
    valid = cache.valid.at[rows, slots].set(mask, mode="drop")
    attn_mask = valid[:, None, :] & (jnp.arange(cache.slots)[None, None, :] <= slots[:, :, None])
    return valid, attn_mask, (rows, slots)
