"""The KV cache: every layer's keys and values, preallocated, plus per-slot bookkeeping, in one of two layouts.

A decoder layer reads and writes its cache only through a :class:`Layout` (``write`` and ``per_head``), so the
model has one layer form whatever the layout; the sampler picks the layout with its decode backend
(:mod:`rrm_jax.sampler.decode`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from rrm_jax.core.config import ModelConfig

# Logical axes of the stacked k/v buffers, slot-major (TPU/GPU) or heads-major (the CPU decode).
CACHE_AXES = ("layers", "batch", "cache_sequence", "kv_heads", "head_dim")
HEADS_MAJOR_CACHE_AXES = ("layers", "batch", "kv_heads", "cache_sequence", "head_dim")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one layer's cache ``[B, S, K, hd]`` (slot-major) or ``[B, K, S, hd]`` (heads-major) lies.

    XLA:CPU's attention dots read a heads-major cache as it lies, where a slot-major one costs a transposed copy
    per layer and step (2.5-3.3x the attention time of a B=8 decode step over 1088 slots). On TPU the heads-major
    scatter of a step's keys made XLA copy the whole cache per step when a chip holds more than one KV head
    (`rrm-jax plan rrm-7b --topology v5p-16`: 12.7 GiB of decode temporaries), so TPU/GPU keep slot-major, whose
    layout XLA picks there.
    """

    heads_major: bool = False

    def write(self, ck: jax.Array, cv: jax.Array, k: jax.Array, v: jax.Array, at) -> tuple[jax.Array, jax.Array]:
        """(ck, cv) with k/v [B, T, K, hd] written at ``at`` = (rows [B, 1], slots [B, T]); out-of-range slots
        are dropped."""
        rows, slots = at
        idx = (rows, slice(None), slots) if self.heads_major else (rows, slots)
        return ck.at[idx].set(k.astype(ck.dtype), mode="drop"), cv.at[idx].set(v.astype(cv.dtype), mode="drop")

    def per_head(self, c: jax.Array) -> jax.Array:
        """A layer's k or v as attention takes it, [B, K, S, hd]."""
        return c if self.heads_major else c.transpose(0, 2, 1, 3)


SLOT_MAJOR, HEADS_MAJOR = Layout(False), Layout(True)


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
    heads_major: bool = struct.field(pytree_node=False, default=False)  # see Layout

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
    def layout(self) -> Layout:
        return HEADS_MAJOR if self.heads_major else SLOT_MAJOR

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
        """k/v as tuples of per-layer arrays (the form the unrolled decode step takes)."""
        return self.replace(k=tuple(self.k), v=tuple(self.v))

    def stacked(self) -> KVCache:
        """Back from :meth:`per_layer` to stacked ``[L, ...]`` k/v."""
        return self.replace(k=jnp.stack(self.k), v=jnp.stack(self.v))

    def placement(self, mask: jax.Array):
        """Where T new tokens [B, T] go and what they attend to -> (valid, attention mask [B, T, S], write index).

        Token t of row b is written at slot ``length[b] + t`` and sees every valid slot up to its own.
        """
        b, t = mask.shape
        slots = self.length[:, None] + jnp.arange(t)[None]  # [B, T]
        rows = jnp.arange(b)[:, None]
        valid = self.valid.at[rows, slots].set(mask, mode="drop")
        attn_mask = valid[:, None, :] & (jnp.arange(self.slots)[None, None, :] <= slots[:, :, None])
        return valid, attn_mask, (rows, slots)
