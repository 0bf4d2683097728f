"""Splash attention (rrm_jax.core.splash): the Pallas kernel in interpret mode against XLA's attention."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rrm_jax


def test_splash_attention_equals_xla_attention_in_interpret_mode():
    """Issue 26.1: the Pallas splash kernel (interpret mode off TPU) with rrm-jax's causal + padding mask equals
    XLA's attention on every real query, forward and gradient, grouped-query heads, left and right padding;
    a length that is not a multiple of its block falls back to XLA's form."""
    from rrm_jax.core.ops import causal_attention

    rng = np.random.default_rng(1)
    b, t, h, k, hd = 2, 256, 2, 1, 16
    q, kk, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(b, t, h, hd), (b, t, k, hd), (b, t, k, hd)])
    real = np.ones((b, t), bool)
    real[0, :45] = False
    real[1, 190:] = False
    mask = jnp.asarray(real)
    w = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32) * jnp.asarray(real)[:, :, None, None]
    loss = lambda impl: lambda q, kk, v: jnp.sum(causal_attention(q, kk, v, mask, impl) * w)
    got, want = (np.asarray(causal_attention(q, kk, v, mask, i)) for i in ("splash", "xla"))
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)
    grads = [jax.grad(loss(i), argnums=(0, 1, 2))(q, kk, v) for i in ("splash", "xla")]
    for g_splash, g_xla in zip(*grads):
        np.testing.assert_allclose(np.asarray(g_splash), np.asarray(g_xla), atol=1e-5)
    short = (x[:, :200] for x in (q, kk, v))
    np.testing.assert_array_equal(
        np.asarray(causal_attention(*short, mask[:, :200], "splash")),
        np.asarray(causal_attention(*(x[:, :200] for x in (q, kk, v)), mask[:, :200], "xla")),
    )
    with pytest.raises(ValueError, match="attention must be one of"):
        causal_attention(q, kk, v, mask, "flash")


def test_a_model_with_splash_attention_gives_xla_attentions_logits():
    """Issue 26.1: ``attention_impl="splash"`` through the whole decoder (a no-cache forward: the train step's,
    the log-prob passes' and the prefill's form) equals XLA's attention on real positions, padded rows included."""
    xla, spl = (rrm_jax.init("tiny", seed=3, attention_impl=i) for i in ("xla", "splash"))
    ids = np.random.default_rng(4).integers(0, xla.config.vocab_size, (2, 128)).astype(np.int32)
    mask = np.ones((2, 128), bool)
    mask[1, 70:] = False  # one kernel block (the op's test above has several); right padding
    want, got = (np.asarray(m.logits(ids, mask)) for m in (xla, spl))
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("form", ["splash", "cudnn"])
def test_a_prefill_chunk_under_a_kernel_equals_xla_cached_attention(form):
    """Issue 26.1: a chunk attending to its row's cache through the kernel (the cached prefix, merged with the
    chunk's own causal block by log-sum-exp) equals XLA's cached attention on every real query: rows at
    different offsets, one with no prefix, one with a partial chunk; the mask is the cache's own placement.
    "cudnn" is cuDNN's call run through jax's reference implementation (tests/test_cudnn.py)."""
    from rrm_jax.core.cudnn import CudnnAttention
    from rrm_jax.core.kv_cache import SLOT_MAJOR, KVCache
    from rrm_jax.core.ops import attention
    from rrm_jax.core.splash import ChunkMask, chunk_attention

    rng = np.random.default_rng(0)
    b, t, s, h, kh, hd = 3, 128, 384, 4, 2, 16
    start, lens = np.array([0, 200, 128]), np.array([128, 57, 1])
    before = jnp.asarray(np.arange(s)[None] < start[:, None])
    tokens = jnp.asarray(np.arange(t)[None] < lens[:, None])
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.float32) for n in (h, kh, kh))
    ck, cv = (jnp.asarray(rng.normal(size=(b, s, kh, hd)), jnp.float32) for _ in range(2))
    cache = KVCache(k=ck[None], v=cv[None], valid=before, length=jnp.asarray(start, jnp.int32))
    _, mask, write = cache.placement(tokens)
    heads = [SLOT_MAJOR.per_head(c) for c in SLOT_MAJOR.write(ck, cv, k, v, write)]
    want = np.asarray(attention(q, *heads, mask))
    impl = "splash" if form == "splash" else CudnnAttention(implementation="xla")
    got = np.asarray(chunk_attention(impl, q, k, v, *heads, ChunkMask(before, tokens)))
    real = np.asarray(tokens)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)


def test_a_splash_model_prefills_through_the_kernel_to_the_float64_reference(tmp_path, monkeypatch):
    """Issue 26.1: ``attention_impl="splash"`` in the sampler: prompts of 1, 128, 300 and 700 tokens in
    128-token chunks prefill through the kernel (its trace is counted) and give the greedy tokens and
    log-probs of a float64 NumPy forward over each prompt alone (no cache, no chunks)."""
    import numpy_reference
    from rrm_jax.core import splash
    from rrm_jax.sampler import SamplingConfig, generate
    from tiny_configs import TINY_CONFIGS

    cfg = TINY_CONFIGS["qwen2-untied-g2-hd128-1e6"]
    weights = numpy_reference.random_checkpoint(tmp_path, cfg)
    model = rrm_jax.load(tmp_path, dtype=jnp.float32, attention_impl="splash")
    traced = []
    kernel = splash.prefix_attention
    monkeypatch.setattr(splash, "prefix_attention", lambda *a, **kw: traced.append(a[2].shape) or kernel(*a, **kw))
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, 300, n).tolist() for n in (1, 128, 300, 700)]
    new = 4
    sampling = SamplingConfig(max_new_tokens=new, temperature=0.0, add_eos_stop=False, max_slots=4)
    outs = generate(model, prompts, sampling, prefill_chunk=128)
    assert traced, "no prefill call ran the kernel"
    for prompt, out in zip(prompts, outs):
        seq = list(prompt)
        for tok, lp in zip(out.token_ids, out.logprobs):
            lg = numpy_reference.logits(weights, cfg, [seq])[0, -1]
            assert tok == int(np.argmax(lg))
            np.testing.assert_allclose(lp, lg[tok] - lg.max() - np.log(np.exp(lg - lg.max()).sum()), atol=2e-4)
            seq.append(tok)


def test_splash_attention_on_a_mesh_runs_under_shard_map_and_equals_xla():
    """Issue 26.1: on a 2 x 2 (fsdp x tensor) mesh of CPU devices the kernel runs per shard (rows over the batch
    axes, heads over the key/value heads' axis): the sharded forward equals XLA's attention, and so does the
    sampler's chunked prefill through it (greedy tokens and log-probs)."""
    code = """
import numpy as np, jax, jax.numpy as jnp
import rrm_jax
from rrm_jax.core.splash import SplashAttention
mesh = jax.make_mesh((1, 2, 2), ("data", "fsdp", "tensor"))
xla = rrm_jax.init("tiny", seed=3, attention_impl="xla", mesh=mesh)
spl = rrm_jax.init("tiny", seed=3, attention_impl="splash", mesh=mesh)
assert isinstance(spl.module.attention_impl, SplashAttention), spl.module.attention_impl
rng = np.random.default_rng(0)
ids = rng.integers(0, xla.config.vocab_size, (4, 128)).astype(np.int32)
mask = np.ones((4, 128), bool); mask[1, 100:] = False; mask[2, :30] = False
want, got = (np.asarray(m.logits(ids, mask)) for m in (xla, spl))
np.testing.assert_allclose(got[mask], want[mask], atol=2e-5, rtol=1e-5)
# the sampler's prefill chunks through the kernel per shard: the same greedy tokens and log-probs as XLA's
from rrm_jax.core import splash
from rrm_jax.sampler import SamplingConfig, generate
traced, kernel = [], splash.prefix_attention
splash.prefix_attention = lambda *a, **kw: traced.append(a[0].shape) or kernel(*a, **kw)
prompts = [rng.integers(1, xla.config.vocab_size, n).tolist() for n in (300, 129, 5, 256)]
sc = SamplingConfig(max_new_tokens=3, temperature=0.0, add_eos_stop=False, max_slots=4)
a, b = (generate(m, prompts, sc, prefill_chunk=128) for m in (xla, spl))
assert traced and all(t[0] < 4 for t in traced), traced  # per shard: fewer rows than a call's
assert [c.token_ids for c in a] == [c.token_ids for c in b]
np.testing.assert_allclose(np.stack([c.logprobs for c in a]), np.stack([c.logprobs for c in b]), atol=1e-4)
print("ok")
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
