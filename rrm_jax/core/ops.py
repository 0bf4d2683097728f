"""The decoder's maths as pure functions: RMSNorm, RoPE, grouped-query attention (cached or causal); how a
step's keys/values are written into a layer's cache is its layout's (:mod:`rrm_jax.core.kv_cache`).

:mod:`rrm_jax.core.model` composes them into the decoder layer; the CPU decode kernel's layer
(:mod:`rrm_jax.core.cpu_kernel`) reuses them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rrm_jax.core.errors import ConfigError


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    # HF numerics: statistics in float32, cast back to the activation dtype, then scale.
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * x32.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate-half RoPE; x [B, T, N, hd], positions [B, T]. Angles in float32."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    cos = jnp.cos(ang)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(ang)[:, :, None, :].astype(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(q, k, v, mask) -> jax.Array:
    """Grouped-query attention over heads-major keys and values.

    q [B,T,H,hd], k/v [B,K,S,hd], mask [B,T,S] bool -> [B,T,H,hd]. The dots run as plain batched matmuls over
    (batch, kv_head) with no transposes of the [T, S] scores (measured ~25% less attention time on CPU).
    """
    b, t, h, hd = q.shape
    kh = k.shape[1]
    qg = q.reshape(b, t, kh, h // kh, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, hd]
    return _attend(qg, k, v, mask).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


ATTENTION_IMPLS = ("xla", "cudnn", "auto", "splash")


def attention_form(impl: str, mesh=None, rules=None, cfg=None, dtype=None):
    """A model's attention form, chosen here for every caller: "xla" (XLA's form, :func:`causal_attention`) or
    the kernel object that runs it, bound to the mesh it shard_maps over: "splash" is the Pallas kernel, "cudnn"
    cuDNN's fused kernel (:mod:`rrm_jax.core.cudnn`, GPU only). "auto" is, by the mesh's platform:

    - TPU: splash (``rrm-jax plan rrm-7b --topology v5p-16``: the update's temporaries 55.3 -> 22.1 GiB per chip,
      the log-prob pass's 18.0 -> 4.1);
    - GPU: cuDNN where it compiles for the heads of ``cfg`` (a ModelConfig) in the compute ``dtype``
      (:func:`rrm_jax.core.cudnn.unavailable`: bf16/fp16 only), else XLA's form. It holds no [T, T] scores, as
      splash does not on TPU; its speed against XLA's form is what ``rrm-jax bench device``'s train section
      measures on a lent GPU (no GPU has run it yet: README, "Accelerators");
    - CPU: XLA's form.
    """
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    if impl == "auto":
        if device.platform == "tpu":
            impl = "splash"
        elif device.platform == "gpu" and cfg is not None and dtype is not None:
            from rrm_jax.core import cudnn

            heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
            impl = "xla" if cudnn.unavailable(device, *heads, jnp.dtype(dtype)) else "cudnn"
        else:
            impl = "xla"
    if impl == "cudnn":
        if device.platform != "gpu":
            raise ConfigError(f"attention=cudnn runs on a GPU; this mesh is {device.platform} (use auto or xla)")
        from rrm_jax.core.cudnn import CudnnAttention
        from rrm_jax.core.sharding import DEFAULT_RULES

        return CudnnAttention(mesh=mesh, rules=rules or DEFAULT_RULES)
    if impl != "splash" or mesh is None:
        return impl
    from rrm_jax.core.sharding import DEFAULT_RULES
    from rrm_jax.core.splash import SplashAttention

    return SplashAttention(mesh, rules or DEFAULT_RULES)


def causal_attention(q, k, v, key_mask, impl="xla", chunk: int = 128) -> jax.Array:
    """Attention over the sequence itself (no cache): query i only ever sees real keys j <= i of its row.

    q [B,T,H,hd], k/v [B,T,K,hd] (as projected), ``key_mask`` [B, T] the real tokens (the kernels take it as
    is; XLA's form builds each chunk's causal block from it, so no [B, T, T] mask is ever held: at 12k-token
    rows that was 0.14 GiB per row, saved with the layer inputs under remat). ``impl`` is an
    :func:`attention_form`: a kernel object runs it (splash where T is a multiple of its block, XLA's form
    elsewhere); a name "splash" / "cudnn" is that kernel on one device; "xla" (and an unresolved "auto") is
    XLA's form: queries go in chunks of ``chunk``; chunk c only scores the keys up to its own end, so the
    upper-triangle blocks are never computed (about half the score work and softmax at long T). Real positions
    match :func:`attention` exactly; a padding query whose keys are all masked gets a (meaningless) uniform
    average over fewer keys.
    """
    if isinstance(impl, str) and impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}")
    run = kernel(impl)
    if run is not None:
        from rrm_jax.core import splash

        if not isinstance(run, splash.SplashAttention) or splash.fits(q.shape[1]):
            return run(q, k, v, key_mask)
    b, t, h, hd = q.shape
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # heads-major [B, K, T, hd]
    if t <= chunk or t % chunk:
        return attention(q, kt, vt, causal_block(key_mask, 0, t))
    kh = kt.shape[1]
    qg = q.reshape(b, t, kh, h // kh, hd).transpose(0, 2, 3, 1, 4)
    outs = []
    for c in range(t // chunk):  # static unroll: t // chunk blocks of growing key length
        lo, hi = c * chunk, (c + 1) * chunk
        outs.append(_attend(qg[:, :, :, lo:hi], kt[:, :, :hi], vt[:, :, :hi], causal_block(key_mask, lo, hi)))
    out = jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def causal_block(key_mask, lo: int, hi: int) -> jax.Array:
    """[B, hi - lo, hi]: whether query lo + i may see key j (j <= lo + i, and key j is real)."""
    causal = jnp.arange(lo, hi)[:, None] >= jnp.arange(hi)[None, :]
    return causal[None] & key_mask[:, None, :hi].astype(bool)


def form_name(form) -> str:
    """An :func:`attention_form`'s name: "xla", "splash" or "cudnn" (what a report shows)."""
    return form if isinstance(form, str) else type(form).__name__.removesuffix("Attention").lower()


def kernel(impl):
    """The kernel object that runs ``impl`` (an :func:`attention_form`), or None for XLA's form."""
    if impl == "splash":
        from rrm_jax.core.splash import SplashAttention

        return SplashAttention()
    if impl == "cudnn":
        from rrm_jax.core.cudnn import CudnnAttention

        return CudnnAttention()
    return None if isinstance(impl, str) else impl


def _attend(qg, kt, vt, mask):
    """qg [B,K,G,T,hd], kt/vt [B,K,S,hd], mask [B,T,S] -> [B,K,G,T,hd]; scores and softmax in float32."""
    scores = jnp.einsum("bkgtd,bksd->bkgts", qg, kt, preferred_element_type=jnp.float32)
    scores = scores * (qg.shape[-1] ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(vt.dtype)
    return jnp.einsum("bkgts,bksd->bkgtd", probs, vt)
