"""The Qwen2 decoder (and its bias-free Llama sibling) in Flax NNX.

Layers are stored stacked (leading ``layers`` axis) and run under ``jax.lax.scan``, so compile time does
not grow with depth. Parameters may be float32 while compute runs in bfloat16; RMSNorm statistics,
RoPE angles, attention softmax and the final logits are always float32.

One attention entry point serves every caller: a forward over a padded batch (``cache=None``) and
prefill/decode steps that read and write a :class:`KVCache` (the sampler drives those through
``__call__`` and :meth:`Qwen2.decode_step`). One output head, :meth:`Qwen2.logits_from_hidden`, serves
the forward, the trainer and the sampler.

This module owns the decoder layer (one form: the cache is read and written through its layout,
:mod:`rrm_jax.core.kv_cache`) and the module that runs it; the maths they compose (RMSNorm, RoPE, attention) is
:mod:`rrm_jax.core.ops`, and the sampler's CPU decode backends are :mod:`rrm_jax.sampler.decode`. What the parameters are (shapes, logical axes, initialisers, HF names) is the table
in :mod:`rrm_jax.core.params`; the module creates its weights from it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from rrm_jax.core.config import ModelConfig
from rrm_jax.core.grad_sink import scan_layers
from rrm_jax.core.kv_cache import SLOT_MAJOR, KVCache
from rrm_jax.core.ops import attention, causal_attention, rms_norm, rope
from rrm_jax.core.params import PARAMS
from rrm_jax.core.splash import ChunkMask, chunk_attention, chunk_fits


# ------------------------------------------------------------------------------------------ modules
class DecoderLayers(nnx.Module):
    """All decoder layers' weights, stacked on a leading ``layers`` axis (scanned, never unrolled)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        for name, spec in PARAMS.items():
            if spec.stacked and spec.present(cfg):
                setattr(self, name, nnx.Param(spec.initial(cfg, rngs, dtype)))

    def stacked(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in PARAMS if isinstance(getattr(self, name, None), nnx.Param)}


def _dense(x, w, in_dims: int = 1):
    """``x``'s last ``in_dims`` axes contracted with ``w``'s first ones, as one 2-D matmul over all positions.

    The same maths as ``einsum("bt...,...->bt...")``, but XLA's CPU backend lays the 3-D form's weight gradient
    out through a transposed copy of the activation gradient ([positions, F] -> [F, positions]), which took half
    of a small model's train step (the MLP's backward: 80 vs 37 ms at [6400, 64] x [64, 256]); the 2-D form
    reads both operands in place. The reshapes are free (row-major), and a batch sharding carries through them.
    """
    lead, contract = x.shape[: x.ndim - in_dims], x.shape[x.ndim - in_dims :]
    k = math.prod(contract)
    out = w.shape[in_dims:]
    y = x.reshape(-1, k) @ w.reshape(k, -1)
    return y.reshape(*lead, *out)


def decoder_layer(cfg: ModelConfig, p: dict, x, positions, mask, kv, write, impl, compute_dtype, layout=SLOT_MAJOR):
    """One decoder layer. ``kv`` is (k_layer, v_layer) of a cache in ``layout``, or None; returns (x, new_kv)."""
    cd = compute_dtype
    h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q = _dense(h, p["q_proj"].astype(cd))
    k = _dense(h, p["k_proj"].astype(cd))
    v = _dense(h, p["v_proj"].astype(cd))
    if "q_bias" in p:
        q, k, v = q + p["q_bias"].astype(cd), k + p["k_bias"].astype(cd), v + p["v_bias"].astype(cd)
    q = rope(q, positions, cfg.rope_theta)
    k = rope(k, positions, cfg.rope_theta)
    if kv is not None:
        kv = layout.write(*kv, k, v, write)
        if isinstance(mask, ChunkMask):  # a prefill chunk under a kernel form (splash, cuDNN)
            o = chunk_attention(impl, q, k, v, *(layout.per_head(c) for c in kv), mask)
        else:  # XLA's dots
            o = attention(q, *(layout.per_head(c).astype(cd) for c in kv), mask)
    else:
        o = causal_attention(q, k, v, mask, impl)
    x = x + _dense(o, p["o_proj"].astype(cd), in_dims=2)
    h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    g = _dense(h, p["gate_proj"].astype(cd))
    u = _dense(h, p["up_proj"].astype(cd))
    x = x + _dense(jax.nn.silu(g) * u, p["down_proj"].astype(cd))
    return x, kv


def _same(x):
    return x


def _stack_layer(cfg, impl, compute_dtype):
    return lambda x, p, positions, mask: decoder_layer(cfg, p, x, positions, mask, None, None, impl, compute_dtype)[0]


# none: autodiff saves everything; dots: matmul outputs saved, the rest recomputed; full: each layer's input saved,
# the layer recomputed in the backward; offload: as full, but the saved inputs and the attention kernel's outputs
# (so its forward is not recomputed) in host memory (core.grad_sink)
REMAT = ("none", "dots", "full", "offload")
RECOMPUTES_LAYERS = ("full", "offload")  # the modes whose backward recomputes each layer from its saved input


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
        residual=None,
    ):
        self.cfg = cfg
        self.compute_dtype = jnp.dtype(compute_dtype or param_dtype)
        self.attention_impl = attention_impl
        self.remat = remat
        self.residual = residual  # a ResidualSharding (rrm_jax.core.sharding) or None: no constraint
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

        ``head`` is a [D, V] projection already in the compute dtype (the unrolled decode's, split once). Without
        it, one position per row ([B, D]: prefill's last token, a decode step) contracts a tied embedding in
        place, since a transposed copy per step would cost more than the step's matmul; a sequence goes
        through :meth:`head_weight`, whose one transpose is amortised over all its positions.
        """
        cd = self.compute_dtype
        if head is None and h.ndim == 2 and self.cfg.tie_word_embeddings:
            return jnp.einsum("bd,vd->bv", h.astype(cd), self.embed[...].astype(cd), preferred_element_type=jnp.float32)
        w = self.head_weight().astype(cd) if head is None else head
        return jnp.einsum("...d,dv->...v", h.astype(cd), w, preferred_element_type=jnp.float32)

    def decode_step(self, tokens: jax.Array, active: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One token per row through the decoder and the output head; tokens/active [B] -> (logits [B, V], cache).

        Rows with ``active`` False write a slot that stays invalid (never attended to). This is the scanned form;
        the sampler's other decode backends (:mod:`rrm_jax.sampler.decode`) compute the same maths.
        """
        h, cache = self(tokens[:, None], None, active[:, None], cache, return_hidden=True)
        return self.logits_from_hidden(h[:, 0]), cache

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
        *,
        return_hidden: bool = False,
        layer_grads: dict | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """tokens [B, T]; positions [B, T] (default: count of real tokens so far); mask [B, T] real-token mask.

        Without a cache, query i attends to real keys j <= i of its own row. With a cache the T tokens are
        written at slots ``cache.length + arange(T)`` and attend to every valid slot up to their own.
        Returns float32 logits [B, T, V] (or final-normed hidden states when ``return_hidden``).

        ``layer_grads`` (no cache; a train step accumulating micro-batches): a float32 buffer shaped like the
        stacked layer weights. The layers then run under full remat through :func:`grad_sink.scan_layers`,
        whose backward adds their gradients into it in place; the gradient reported for them is the sum.
        ``remat = "offload"`` always runs them there, keeping what their backward reuses in host memory.
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
            attn_mask, write = mask, None  # the layers' causal attention builds its blocks from the real tokens
        else:
            valid, attn_mask, write = cache.placement(mask)
            if chunk_fits(self.attention_impl, t, cache.slots):
                attn_mask = ChunkMask(before=cache.valid, tokens=mask)

        params = self.layers.stacked()
        layout = SLOT_MAJOR if cache is None else cache.layout
        layer = lambda x, p, kv: decoder_layer(
            cfg, p, x, positions, attn_mask, kv, write, self.attention_impl, self.compute_dtype, layout
        )
        if self.remat == "full":
            layer = jax.checkpoint(layer)
        elif self.remat == "dots":
            layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)

        if cache is None:
            keep = self.residual or _same
            if layer_grads is not None or self.remat == "offload":
                step = _stack_layer(cfg, self.attention_impl, self.compute_dtype)
                x = scan_layers(step, keep, self.remat == "offload", params, layer_grads, x, positions, attn_mask)
            else:

                def body(x, p):
                    x, _ = layer(x, p, None)
                    return keep(x), None

                x, _ = jax.lax.scan(body, keep(x), params)
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
