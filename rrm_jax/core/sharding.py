"""The device mesh and the one table that maps logical axes to mesh axes.

Every array that lives on devices (params, optimizer state, activations, KV cache, batches) is named
with logical axes (``"embed"``, ``"heads"``, ``"batch"`` ...); :class:`ShardingRules` turns those names
into a ``PartitionSpec`` for the mesh at hand. Change the table, not the model, to change the layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rrm_jax.core.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """logical axis -> mesh axis (or axes, or None for replicated)."""

    batch: tuple[str, ...] | str | None = ("data", "fsdp")
    sequence: str | None = None
    layers: str | None = None
    vocab: str | None = "tensor"
    embed: str | None = "fsdp"
    heads: str | None = "tensor"
    kv_heads: str | None = "tensor"
    head_dim: str | None = None
    mlp: str | None = "tensor"
    cache_sequence: str | None = None
    act_embed: str | None = None  # activations keep the hidden dim whole (no all-gathers inside a layer)
    # The residual stream between layers (what full remat saves per layer) splits its positions over the tensor
    # axis, so the saved layer inputs shrink by that axis' size (rrm-32b on v5p-64: docs/benchmarks.md, TPU
    # plans). Inside a layer XLA keeps the positions split and gathers the layer's weights over tensor; gathering
    # the positions instead for tensor-parallel matmuls (Megatron's form) planned larger: 73.7 against 63.3 GiB.
    act_sequence: str | None = "tensor"
    # The loss's logits [rows, chunk, V] split their vocabulary over these axes, the rows gathered over them: each
    # chunk then moves its hidden states [rows, chunk, D], not the head's gradient [D, V] (1 GiB per chunk of
    # rrm-7b on v5p-16, and 2 GiB of float32 beside it: docs/benchmarks.md, TPU plans).
    act_vocab: tuple[str, ...] | str | None = ("fsdp", "tensor")

    def spec(self, logical: Sequence[str | None], mesh: Mesh | None = None, shape: Sequence[int] | None = None) -> P:
        """PartitionSpec for logical axes; a mesh axis that does not divide the dim is dropped (replicated)."""
        out, used = [], set()
        for i, name in enumerate(logical):
            axes = None if name is None else getattr(self, name)
            if axes is None:
                out.append(None)
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            if mesh is not None:
                axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
                if shape is not None:
                    keep, size = [], 1
                    for a in axes:
                        if shape[i] % (size * mesh.shape[a]) == 0:
                            keep.append(a)
                            size *= mesh.shape[a]
                    axes = tuple(keep)
            used.update(axes)
            out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
        return P(*out)

    def sharding(self, mesh: Mesh, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
        return NamedSharding(mesh, self.spec(logical, mesh, shape))


DEFAULT_RULES = ShardingRules()


@dataclasses.dataclass(frozen=True)
class ResidualSharding:
    """Where a no-cache forward's residual stream [B, T, D] lies between layers: ``rules``' batch, act_sequence and
    act_embed axes on ``mesh`` (a static field of the model, as the splash kernel's mesh is)."""

    mesh: Mesh
    rules: ShardingRules

    @classmethod
    def of(cls, mesh: Mesh, rules: ShardingRules) -> ResidualSharding | None:
        """The constraint where it splits anything beyond the batch (its axis has devices), else None."""
        axis = rules.act_sequence
        return cls(mesh, rules) if axis is not None and mesh.shape.get(axis, 1) > 1 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, self.rules.sharding(self.mesh, RESIDUAL, x.shape))


RESIDUAL = ("batch", "act_sequence", "act_embed")


@dataclasses.dataclass(frozen=True)
class LogitSharding:
    """The log-prob pass's layout: logits [rows, chunk, V] with the vocabulary split over ``rules.act_vocab``'s
    axes and the rows over the batch axes left; the head [D, V] split as the logits' vocabulary."""

    mesh: Mesh
    rules: ShardingRules

    @classmethod
    def of(cls, mesh: Mesh, rules: ShardingRules) -> LogitSharding | None:
        """The layout where the vocabulary's axes have devices, else None (nothing to constrain)."""
        return cls(mesh, rules) if rules.spec(("act_vocab",), mesh)[0] is not None else None

    def _specs(self, vocab: int):
        split = self.rules.spec(("act_vocab",), self.mesh, (vocab,))[0]
        used = {split} if isinstance(split, str) else set(split or ())
        batch = self.rules.spec(("batch",), self.mesh)[0]
        rows = tuple(a for a in ((batch,) if isinstance(batch, str) else batch or ()) if a not in used)
        return (rows or None), split

    def hidden(self, h: jax.Array, vocab: int) -> jax.Array:
        return jax.lax.with_sharding_constraint(h, NamedSharding(self.mesh, P(self._specs(vocab)[0], None, None)))

    def logits(self, z: jax.Array) -> jax.Array:
        rows, split = self._specs(z.shape[-1])
        return jax.lax.with_sharding_constraint(z, NamedSharding(self.mesh, P(rows, None, split)))

    def head(self, w: jax.Array) -> jax.Array:
        return jax.lax.with_sharding_constraint(w, NamedSharding(self.mesh, P(None, self._specs(w.shape[-1])[1])))


def per_shard(fn, mesh: Mesh, rules: ShardingRules, q, k, v, key_mask, heads_major: bool = False):
    """An attention kernel ``fn(q, k, v, key_mask)`` run on each device's own rows and heads under ``shard_map``
    (XLA cannot partition a Pallas call, and cuDNN's partitioner takes no split positions): rows split as the
    batch is, heads as the key/value heads are (where that axis divides them; else every device holds all heads
    of its rows). q [B,T,H,hd]; k/v [B,S,K,hd], or [B,K,S,hd] with ``heads_major``. ``fn`` returns one array
    like q, or (out [B,K,G,T,hd], log-sum-exp [B,K,G,T]) for a prefix call (``heads_major``)."""
    kv_axis = 1 if heads_major else 2
    rows = rules.spec(("batch",), mesh, q.shape[:1])[0]
    heads = rules.spec(("kv_heads",), mesh, k.shape[kv_axis : kv_axis + 1])[0]  # divides K, so also H = K x G
    qs = P(rows, None, heads, None)
    kvs = P(rows, heads, None, None) if heads_major else qs
    out = (P(rows, heads, None, None, None), P(rows, heads, None, None)) if heads_major else qs
    return jax.shard_map(fn, mesh=mesh, in_specs=(qs, kvs, kvs, P(rows, None)), out_specs=out, check_vma=False)(
        q, k, v, key_mask
    )


def mesh_misfit(shape: Sequence[int], n: int, axis_names: Sequence[str] = MESH_AXES) -> str | None:
    """Why ``shape`` (one -1 may take the devices left) cannot be laid over ``n`` devices; None when it can."""
    fixed = math.prod(s for s in shape if s != -1)
    if (n % fixed == 0) if -1 in shape else fixed == n:
        return None
    named = ", ".join(f"{a}={s}" for a, s in zip(axis_names, shape) if s not in (-1, 1))
    return f"needs {'a multiple of ' if -1 in shape else ''}{fixed} devices, have {n}" + (
        f" ({named})" if named else ""
    )


def make_mesh(shape: Sequence[int] | None = None, axis_names: Sequence[str] = MESH_AXES, devices=None) -> Mesh:
    """A mesh over all devices. ``shape`` defaults to pure FSDP ``(1, n, 1)``; -1 fills the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if shape is None:
        shape = (1, n, 1)
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ConfigError(f"mesh shape {shape}: at most one -1")
    why = mesh_misfit(shape, n, axis_names)
    if why:
        raise ConfigError(f"mesh shape {tuple(shape)} {why}")
    if -1 in shape:
        shape[shape.index(-1)] = n // math.prod(s for s in shape if s != -1)
    return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape), devices=devices)


def as_auto(mesh: Mesh | None) -> Mesh:
    """The same devices and axis names with Auto axis types.

    A user may pass a mesh with Explicit axes (``jax.make_mesh``'s default in new jax); our jitted
    functions state their shardings explicitly with pjit semantics, so we run them on the Auto view.
    """
    if mesh is None:
        return make_mesh()
    types = getattr(mesh, "axis_types", None)
    if types is not None and all(t == AxisType.Auto for t in types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def logical_sharding(mesh: Mesh, logical, shape=None, rules: ShardingRules = DEFAULT_RULES) -> NamedSharding:
    return rules.sharding(mesh, logical, shape)


def shard_batch(x, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES):
    """Place a host array with batch on the leading axis (rest replicated)."""
    x = np.asarray(x)
    logical = ("batch",) + (None,) * (x.ndim - 1)
    return jax.device_put(x, rules.sharding(mesh, logical, x.shape))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
