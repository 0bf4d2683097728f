"""cuDNN's fused (flash) attention, through ``jax.nn.dot_product_attention``: a sequence attending to itself, a
prefill chunk to its cache.

XLA's attention on a GPU materialises the [rows, heads, T, T] scores; cuDNN's kernel streams key blocks through an
online softmax and skips the blocks above the diagonal. Handing it rrm-jax's [B, T, T] mask as ``mask=`` would not
do that: jax turns a boolean mask into a dense bias of the same size. So the mask goes in the kernel's own terms:
causal plus per-row lengths (``PADDING_CAUSAL``). Lengths mean the real tokens come first; every batch rrm-jax
builds holds each row's real tokens as one run (right-padded rows in training, left-padded ones from a user, the
sampler's cache filled from slot 0), so the run is rolled to the front of the row, attended, and rolled back. A
row whose real tokens are not one run is outside this form (XLA's form takes any mask).

``implementation="xla"`` runs the very same call through jax's reference implementation of the function, on any
backend: the tests check that this translation equals rrm-jax's XLA attention on CPU, and ``rrm-jax bench
device`` checks cuDNN's kernel against XLA's on a GPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rrm_jax.core.sharding import DEFAULT_RULES, ShardingRules, per_shard


def _runs(key_mask):
    """Per row of ``key_mask`` [B, T]: the first real position and the run's length (at least 1: cuDNN is not
    asked for an empty row; an empty row's outputs are never read)."""
    first = jnp.argmax(key_mask, axis=1).astype(jnp.int32)
    return first, jnp.maximum(key_mask.sum(axis=1), 1).astype(jnp.int32)


def _roll(x, shift):
    """x [B, T, ...] with row b's element i taken from (i + shift[b]) mod T."""
    t = x.shape[1]
    idx = (jnp.arange(t, dtype=jnp.int32)[None] + shift[:, None]) % t
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


@dataclasses.dataclass(frozen=True)
class CudnnAttention:
    """A model's attention form (hashable: a static field of the model), ``ops.attention_form``'s for a GPU: on a
    mesh of several devices each runs its own rows and heads (``sharding.per_shard``), as splash does on TPU."""

    implementation: str = "cudnn"  # "xla": jax's reference implementation of the same call (CPU tests)
    mesh: Mesh | None = None
    rules: ShardingRules = DEFAULT_RULES

    def __call__(self, q, k, v, key_mask) -> jax.Array:
        """q [B,T,H,hd], k/v [B,T,K,hd], key_mask [B,T] (one run of real tokens a row) -> [B,T,H,hd], causal."""
        run = functools.partial(_causal, self.implementation)
        if self.mesh is None or self.mesh.size == 1:
            return run(q, k, v, key_mask)
        return per_shard(run, self.mesh, self.rules, q, k, v, key_mask)

    def prefix(self, q, k, v, key_mask):
        """q [B,C,H,hd] against heads-major k/v [B,K,W,hd], every query seeing every key where ``key_mask`` [B,W]
        (one run a row) -> (out [B,K,G,C,hd], log-sum-exp of the scaled scores [B,K,G,C] float32), as
        :func:`rrm_jax.core.splash.prefix_attention` gives them to ``chunk_attention``'s merge. A row with no
        real key gets a log-sum-exp of float32's lowest, so it weighs nothing there."""
        run = functools.partial(_prefix, self.implementation)
        if self.mesh is None or self.mesh.size == 1:
            return run(q, k, v, key_mask)
        return per_shard(run, self.mesh, self.rules, q, k, v, key_mask, heads_major=True)


def _causal(implementation, q, k, v, key_mask):
    first, n = _runs(key_mask)
    q, k, v = (_roll(x, first) for x in (q, k, v))
    out = jax.nn.dot_product_attention(
        q, k, v, is_causal=True, query_seq_lengths=n, key_value_seq_lengths=n, implementation=implementation
    )
    return _roll(out, -first)


def _prefix(implementation, q, k, v, key_mask):
    b, c, h, hd = q.shape
    kh = k.shape[1]
    first, n = _runs(key_mask)
    k, v = (_roll(x.transpose(0, 2, 1, 3), first) for x in (k, v))  # [B, W, K, hd], the run first
    out, lse = jax.nn.dot_product_attention(
        q,
        k,
        v,
        query_seq_lengths=jnp.full((b,), c, jnp.int32),
        key_value_seq_lengths=n,
        implementation=implementation,
        return_residual=True,
    )  # out [B, C, H, hd], lse [B, C, H]
    lse = jnp.where(key_mask.any(axis=1)[:, None, None], lse.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    out = out.reshape(b, c, kh, h // kh, hd).transpose(0, 2, 3, 1, 4)
    return out, lse.reshape(b, c, kh, h // kh).transpose(0, 2, 3, 1)


@functools.cache
def unavailable(device, heads: int, kv_heads: int, head_dim: int, dtype) -> str | None:
    """Why cuDNN's kernel cannot run rrm-jax's attention on ``device`` at this head shape and dtype (None when it
    compiles): the forward and backward of a sequence attending to itself, and a prefill chunk's prefix, at a
    small length. jax refuses at trace or compile time what cuDNN cannot run (a float32 dtype, a head_dim past
    its limit, an old cuDNN, a backend without it), so a compile is the whole test."""
    if device.platform != "gpu":
        return f"cuDNN's attention runs on a GPU, not on {device.platform}"
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.bfloat16, jnp.float16):
        return f"cuDNN's fused attention takes bfloat16 or float16, not {dtype}"
    return _compile_error(device, heads, kv_heads, head_dim, dtype)


def _compile_error(device, heads: int, kv_heads: int, head_dim: int, dtype) -> str | None:
    sharding = NamedSharding(Mesh(np.array([device]), ("d",)), P())
    spec = lambda *shape, dt=dtype: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
    t = 256
    q, kv, mask = spec(1, t, heads, head_dim), spec(1, t, kv_heads, head_dim), spec(1, t, dt=jnp.bool_)
    run = CudnnAttention()
    loss = lambda q, k, v, m: run(q, k, v, m).astype(jnp.float32).sum()
    cache = spec(1, kv_heads, 2 * t, head_dim)
    try:
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, mask).compile()
        jax.jit(run.prefix).lower(q, cache, cache, spec(1, 2 * t, dt=jnp.bool_)).compile()
    except Exception as e:  # jax raises ValueError, NotImplementedError, RuntimeError or XlaRuntimeError here
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    return None
