"""The decode step's backends, chosen in one place (:func:`choose`); each computes the model's own maths.

- **scan** (TPU/GPU): :meth:`Qwen2.decode_step`, the layers under the model's scan over a slot-major cache.
- **unrolled** (CPU): the layers unrolled over weights split out of the stacked arrays once per decode loop
  (:func:`split_weights`) and a heads-major cache. XLA:CPU copies a layer's weights out of the stacked array on
  every scan iteration (the dot needs its own buffer), tripling weight traffic in a bandwidth-bound step; and its
  attention dots read a heads-major cache as it lies (:class:`rrm_jax.core.kv_cache.Layout`).
- **kernel** (CPU, float32, one device): unrolled, with the matmuls through :mod:`rrm_jax.core.cpu_kernel` over
  weights packed once into its float32 panels; an FFI call has no sharding rule, so only on a one-device mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from rrm_jax.core import cpu_kernel as kernel
from rrm_jax.core.kv_cache import KVCache
from rrm_jax.core.model import Qwen2, decoder_layer
from rrm_jax.core.ops import rms_norm


@struct.dataclass
class UnrolledWeights:
    """Per-layer weights and the ``[D, V]`` output projection, split out of the stacked arrays once.

    ``fused``: ``layers`` is one dict of stacked weights in the CPU kernel's packed float32 form
    (:func:`rrm_jax.core.cpu_kernel.fuse_layers`) and the head is packed too.
    """

    layers: tuple[dict[str, jax.Array], ...] | dict[str, jax.Array]
    head: jax.Array
    fused: bool = struct.field(pytree_node=False, default=False)


# Where the decode step runs its layers unrolled (weights split once, no scan) rather than scanned. CPU: the
# decode benchmarks (docs/benchmarks.md). GPU: on one H200 the unrolled step was faster at every batch measured,
# greedy and sampled (B = 1: 1.34 vs 1.73 ms, B = 32: 1.16 vs 2.14 ms; docs/device-h200-decode.json). TPU: not
# measured yet, so the scan (one compiled layer, the smaller program) stays.
UNROLLED_ON = ("cpu", "gpu")


def unrolled_by_default(mesh) -> bool:
    return mesh.devices.flat[0].platform in UNROLLED_ON


def choose(model, unroll_layers: bool | None = None, cpu_kernel: bool | None = None) -> tuple[bool, bool]:
    """(unroll_layers, cpu_kernel) for ``model``'s mesh: unrolled where measured faster (:data:`UNROLLED_ON`), with
    the CPU kernel where it fits and builds; an explicit choice that cannot run is a ValueError."""
    if unroll_layers is None:
        unroll_layers = unrolled_by_default(model.mesh)
    f32 = jnp.dtype(model.module.compute_dtype) == jnp.float32
    fits = bool(unroll_layers) and f32 and model.mesh.size == 1
    if cpu_kernel and not (fits and kernel.available()):
        raise ValueError(
            "the CPU matmul kernel needs the unrolled CPU decode, float32 compute, a one-device mesh "
            "and a built kernel (rrm_jax.core.cpu_kernel.available())"
        )
    if cpu_kernel is None:
        cpu_kernel = fits and kernel.available()
    return bool(unroll_layers), bool(cpu_kernel)


def split_weights(module: Qwen2, fused: bool = False) -> UnrolledWeights:
    """The weights :func:`step` runs unrolled over, materialised once outside a decode loop.

    A tied embedding is transposed here too: XLA:CPU streams ``h @ W[D, V]`` markedly faster than
    ``h @ E[V, D].T``. The barrier keeps XLA from sinking the split back into the loop.
    """
    stacked = module.layers.stacked()
    if fused:  # packed by the kernel's own routine, stacked (the kernel indexes the layer), head included
        tied = module.cfg.tie_word_embeddings
        head = kernel.pack((module.embed if tied else module.lm_head)[...].astype(jnp.float32), transposed=tied)
        layers = kernel.fuse_layers(module.cfg, {k: v.astype(jnp.float32) for k, v in stacked.items()})
        return UnrolledWeights(layers=layers, head=head, fused=True)
    layers = tuple({k: v[i] for k, v in stacked.items()} for i in range(module.cfg.num_layers))
    layers, head = jax.lax.optimization_barrier((layers, module.head_weight().astype(module.compute_dtype)))
    return UnrolledWeights(layers=layers, head=head)


def logits(module: Qwen2, h: jax.Array, weights: UnrolledWeights) -> jax.Array:
    """The output head over :func:`split_weights`: final-normed hidden [B, D] -> float32 logits [B, V]."""
    if weights.fused:
        return kernel.matmul(h, weights.head, module.cfg.vocab_size)
    return module.logits_from_hidden(h, weights.head)


def step(
    module: Qwen2, tokens: jax.Array, active: jax.Array, cache: KVCache, weights: UnrolledWeights | None = None
) -> tuple[jax.Array, KVCache]:
    """One token per row -> (logits [B, V], cache). Without ``weights`` the scan backend over the stacked cache;
    with them (:func:`split_weights`) the layers unrolled over a :meth:`KVCache.per_layer` cache."""
    if weights is None:
        return module.decode_step(tokens, active, cache)
    cfg = module.cfg
    positions = jnp.sum(cache.valid, axis=1, keepdims=True)  # what __call__ derives for one token
    valid, attn_mask, write = cache.placement(active[:, None])
    x = module.embed_tokens(tokens[:, None])
    ks, vs = [], []
    for i, kv in enumerate(zip(cache.k, cache.v)):
        if weights.fused:
            x, (k, v) = kernel.decoder_layer(cfg, weights.layers, i, x, positions, attn_mask, kv, write)
        else:
            x, (k, v) = decoder_layer(
                cfg, weights.layers[i], x, positions, attn_mask, kv, write, module.attention_impl,
                module.compute_dtype, cache.layout,
            )  # fmt: skip
        ks.append(k)
        vs.append(v)
    h = rms_norm(x, module.final_norm[...], cfg.rms_norm_eps)[:, 0]
    cache = cache.replace(k=tuple(ks), v=tuple(vs), valid=valid, length=cache.length + 1)
    return logits(module, h, weights), cache
