"""Splash attention (Pallas, ``jax.experimental.pallas.ops.tpu``) for a sequence attending to itself.

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

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from rrm_jax.core.sharding import DEFAULT_RULES, ShardingRules

BLOCK = 128  # the kernel's query and key block: T must be a multiple (callers fall back to XLA's form)


def fits(t: int) -> bool:
    return t % BLOCK == 0


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
    return sk.make_splash_mqa_single_device(mask, block_sizes=blocks, interpret=interpret), sk.SegmentIds


@dataclasses.dataclass(frozen=True)
class SplashAttention:
    """The splash kernel on ``mesh`` (None: one device), as a model's attention form (hashable: a static field)."""

    mesh: Mesh | None = None
    rules: ShardingRules = DEFAULT_RULES

    def __call__(self, q, k, v, key_mask) -> jax.Array:
        if self.mesh is None or self.mesh.size == 1:
            return splash_attention(q, k, v, key_mask)
        rows = self.rules.spec(("batch",), self.mesh, q.shape[:1])[0]
        heads = self.rules.spec(("kv_heads",), self.mesh, k.shape[2:3])[0]  # divides K, so also H = K x G
        qkv = P(rows, None, heads, None)
        return jax.shard_map(
            splash_attention,
            mesh=self.mesh,
            in_specs=(qkv, qkv, qkv, P(rows, None)),
            out_specs=qkv,
            check_vma=False,
        )(q, k, v, key_mask)


def splash_attention(q, k, v, key_mask) -> jax.Array:
    """q [B,T,H,hd], k/v [B,T,K,hd], key_mask [B,T] bool (real tokens) -> [B,T,H,hd], causal."""
    b, t, h, hd = q.shape
    kh = k.shape[2]
    kernel, segment_ids = _kernel(t, h // kh, jax.default_backend() != "tpu")
    # The kernel does not scale the scores; scaling q first is the same product.
    qg = (q * hd**-0.5).reshape(b, t, kh, h // kh, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, hd]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, hd]
    seg = key_mask.astype(jnp.int32)

    def one_row(qr, kr, vr, sr):
        ids = segment_ids(q=sr, kv=sr)
        return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=ids))(qr, kr, vr)

    out = jax.vmap(one_row)(qg, kt, vt, seg)  # [B, K, G, T, hd]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(q.dtype)
