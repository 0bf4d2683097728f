"""Splash attention (Pallas, ``jax.experimental.pallas.ops.tpu``): a sequence attending to itself, a prefill chunk
to its cache.

XLA's attention materialises the [rows, heads, T, T] scores; at RRM lengths (12k-token rows) those scores are the
update's peak memory (``rrm-jax plan``). The splash kernel streams key blocks through an online softmax and skips
the blocks above the diagonal, so neither the scores nor their gradient are ever whole.

rrm-jax's mask is causal AND a key mask (padding, left or right); it maps to the kernel's ``CausalMask`` plus
segment ids (1 real, 0 padding) for queries and keys alike: a real query sees exactly the real keys up to itself,
as in XLA's form; a padding query sees padding keys up to itself (it always has one, itself), and its output is
never read. Grouped-query heads run as the kernel's multi-query form once per key/value head (a vmap over batch
and key/value heads). The kernel is a single-device program (XLA cannot partition a Pallas call), so on a
mesh :class:`SplashAttention` runs it under ``shard_map``: rows split as the batch is (``rules.batch``), heads as
the key/value heads are (``rules.kv_heads``, where it divides them; else every device holds all heads of its
rows). Off TPU the kernel runs in Pallas' interpret mode (tests check it against XLA's attention there).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rrm_jax.core.grad_sink import SAVE
from rrm_jax.core.sharding import DEFAULT_RULES, ShardingRules, per_shard

BLOCK = 128  # the kernel's query and key block: T must be a multiple (callers fall back to XLA's form)


def fits(t: int) -> bool:
    return t % BLOCK == 0


class ChunkMask(NamedTuple):
    """A cached call's mask in the parts :func:`chunk_attention` takes (the model passes it instead of the
    [B, T, S] mask when the kernel fits): ``before`` [B, S] the slots valid before this call, ``tokens`` [B, T]
    the call's real tokens, written at the slots after every valid one."""

    before: jax.Array
    tokens: jax.Array


@functools.cache
def _kernel(t: int, groups: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.CausalMask(shape=(t, t)) for _ in range(groups)])
    blocks = sk.BlockSizes(
        block_q=BLOCK,
        block_kv=BLOCK,
        block_kv_compute=BLOCK,
        block_q_dkv=BLOCK,
        block_kv_dkv=BLOCK,
        block_kv_dkv_compute=BLOCK,
        block_q_dq=BLOCK,
        block_kv_dq=BLOCK,
    )
    # its output and log-sum-exps named: remat = "offload" keeps them, and the backward's recompute skips this kernel.
    # Built outside any trace: it is cached, and its mask arrays made inside make_jaxpr would be that trace's tracers
    with jax.ensure_compile_time_eval():
        kernel = sk.make_splash_mqa_single_device(
            mask, block_sizes=blocks, residual_checkpoint_name=SAVE, interpret=interpret
        )
    return kernel, sk.SegmentIds


@functools.cache
def _prefix_kernel(c: int, w: int, groups: int, interpret: bool):
    """Forward only, with the log-sum-exps: ``c`` queries against ``w`` keys, every pair allowed by the mask
    (the segment ids say which keys are real)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.FullMask((c, w)) for _ in range(groups)])
    blocks = sk.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK)
    with jax.ensure_compile_time_eval():  # cached: see _kernel
        kernel = sk.make_splash_mqa_single_device(mask, block_sizes=blocks, save_residuals=True, interpret=interpret)
    return kernel, sk.SegmentIds


@dataclasses.dataclass(frozen=True)
class SplashAttention:
    """The splash kernel on ``mesh`` (None: one device), as a model's attention form (hashable: a static field)."""

    mesh: Mesh | None = None
    rules: ShardingRules = DEFAULT_RULES

    def __call__(self, q, k, v, key_mask) -> jax.Array:
        fn = functools.partial(splash_attention, interpret=_interpret(self.mesh))
        if self.mesh is None or self.mesh.size == 1:
            return fn(q, k, v, key_mask)
        return per_shard(fn, self.mesh, self.rules, q, k, v, key_mask)

    def prefix(self, q, k, v, key_mask):
        """:func:`prefix_attention`, per shard on a mesh (rows and key/value heads split as in ``__call__``)."""
        fn = functools.partial(prefix_attention, interpret=_interpret(self.mesh))
        if self.mesh is None or self.mesh.size == 1:
            return fn(q, k, v, key_mask)
        return per_shard(fn, self.mesh, self.rules, q, k, v, key_mask, heads_major=True)


def _interpret(mesh: Mesh | None) -> bool:
    """Pallas' interpret mode unless the program is for TPUs. The mesh's devices say which: `rrm-jax plan` compiles
    for a TPU slice from a CPU host, whose default backend is the CPU's (there, interpreted, the kernel was a loop
    of XLA ops, not the Mosaic kernel the slice runs)."""
    return (jax.default_backend() if mesh is None else mesh.devices.flat[0].platform) != "tpu"


def splash_attention(q, k, v, key_mask, interpret: bool | None = None) -> jax.Array:
    """q [B,T,H,hd], k/v [B,T,K,hd], key_mask [B,T] bool (real tokens) -> [B,T,H,hd], causal."""
    b, t, h, hd = q.shape
    kh = k.shape[2]
    kernel, segment_ids = _kernel(t, h // kh, _interpret(None) if interpret is None else interpret)
    # The kernel does not scale the scores; scaling q first is the same product.
    qg = (q * hd**-0.5).reshape(b, t, kh, h // kh, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, hd]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, hd]
    seg = key_mask.astype(jnp.int32)

    def one_row(qr, kr, vr, sr):
        ids = segment_ids(q=sr, kv=sr)
        return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=ids))(qr, kr, vr)

    out = jax.vmap(one_row)(qg, kt, vt, seg)  # [B, K, G, T, hd]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(q.dtype)


def prefix_attention(q, k, v, key_mask, interpret: bool | None = None):
    """q [B,C,H,hd] against heads-major k/v [B,K,W,hd], every query seeing every key where ``key_mask`` [B,W]
    -> (out [B,K,G,C,hd], log-sum-exp of the scaled scores [B,K,G,C] float32). A query with no real key gets
    a log-sum-exp near the kernel's mask value (-0.7 x float32's max), so it weighs nothing in a merge."""
    b, c, h, hd = q.shape
    kh, w = k.shape[1], k.shape[2]
    kernel, segment_ids = _prefix_kernel(c, w, h // kh, _interpret(None) if interpret is None else interpret)
    qg = (q * hd**-0.5).reshape(b, c, kh, h // kh, hd).transpose(0, 2, 3, 1, 4)
    queries = jnp.ones((c,), jnp.int32)

    def one_row(qr, kr, vr, kseg):
        ids = segment_ids(q=queries, kv=kseg)
        return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=ids))(qr, kr, vr)

    out, (lse,) = jax.vmap(one_row)(qg, k, v, key_mask.astype(jnp.int32))
    return out, lse.astype(jnp.float32)


def chunk_attention(impl, q, k, v, k_cache, v_cache, mask: ChunkMask) -> jax.Array:
    """T new tokens q/k/v [B,T,H|K,hd] attending to the cache k/v [B,K,S,hd] (heads-major, this call's keys
    already written) under ``mask``: the same as XLA's cached attention, never holding the [T, S] scores.
    ``impl`` is a kernel with a ``prefix`` (splash's, or cuDNN's :class:`rrm_jax.core.cudnn.CudnnAttention`)."""
    b, t, h, hd = q.shape
    kh = k.shape[2]
    run = SplashAttention() if impl == "splash" else impl
    o_cache, lse_cache = run.prefix(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), mask.before)
    # the call's own keys as the cache holds them (its dtype), so the sum equals the cached form's
    k, v = (x.astype(k_cache.dtype).astype(q.dtype).transpose(0, 2, 1, 3) for x in (k, v))  # [B, K, T, hd]
    qg = q.reshape(b, t, kh, h // kh, hd).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("bkgtd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32) * hd**-0.5
    own = jnp.tril(jnp.ones((t, t), bool))[None] & mask.tokens[:, None, :]
    scores = jnp.where(own[:, None, None], scores, jnp.finfo(jnp.float32).min)
    lse_own = jax.nn.logsumexp(scores, axis=-1)
    o_own = jnp.einsum("bkgts,bksd->bkgtd", jnp.exp(scores - lse_own[..., None]).astype(v.dtype), v)
    top = jnp.maximum(lse_cache, lse_own)
    w_cache, w_own = jnp.exp(lse_cache - top)[..., None], jnp.exp(lse_own - top)[..., None]
    out = (w_cache * o_cache.astype(jnp.float32) + w_own * o_own.astype(jnp.float32)) / (w_cache + w_own)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(q.dtype)


def chunk_fits(impl, t: int, s: int) -> bool:
    """Whether a cached call of ``t`` tokens over ``s`` slots runs :func:`chunk_attention` under ``impl``: a
    kernel form (splash where both are multiples of its block; cuDNN at any length). Decode steps, T = 1, keep
    XLA's dots: the cache is read once whatever the form."""
    if t == 1 or isinstance(impl, str) and impl != "splash":
        return False
    return not (impl == "splash" or isinstance(impl, SplashAttention)) or (fits(t) and fits(s))
