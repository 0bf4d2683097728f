"""cuDNN's attention form (rrm_jax.core.cudnn): its translation of rrm-jax's mask into the kernel's causal +
lengths terms, run through jax's reference implementation of the same call, against XLA's attention; and where
"auto" picks it. cuDNN's kernel itself runs on a GPU only: ``rrm-jax bench device`` checks it there."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rrm_jax
from rrm_jax.core import cudnn
from rrm_jax.core.cudnn import CudnnAttention

REFERENCE = CudnnAttention(implementation="xla")  # the same call as on a GPU, through jax's XLA implementation


def test_the_cudnn_form_equals_xla_attention_forward_and_gradient():
    """Rows right-padded, left-padded, full and empty, grouped-query heads: on every real query the rolled
    causal + lengths call equals XLA's attention, and so do the gradients of q, k and v."""
    from rrm_jax.core.ops import causal_attention

    rng = np.random.default_rng(0)
    b, t, h, kh, hd = 4, 40, 4, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.float32) for n in (h, kh, kh))
    real = np.ones((b, t), bool)
    real[0, 29:] = False  # right padding (training rows)
    real[1, :13] = False  # left padding
    real[3] = False  # an empty row (a batch's filler)
    mask = jnp.asarray(real)
    w = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32) * jnp.asarray(real)[:, :, None, None]
    got, want = (np.asarray(causal_attention(q, k, v, mask, i)) for i in (REFERENCE, "xla"))
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)
    loss = lambda impl: lambda q, k, v: jnp.sum(causal_attention(q, k, v, mask, impl) * w)
    grads = [jax.grad(loss(i), argnums=(0, 1, 2))(q, k, v) for i in (REFERENCE, "xla")]
    for g, g_xla in zip(*grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_xla), atol=1e-5)


def test_prefill_chunks_of_any_length_take_the_cudnn_form():
    """Every cached call of more than one token goes through cuDNN's prefix call (splash needs multiples of its
    block; tests/test_splash.py checks both forms' chunk attention against XLA's); decode steps keep XLA's dots."""
    from rrm_jax.core.splash import chunk_fits

    assert chunk_fits(REFERENCE, 24, 72) and chunk_fits("splash", 128, 384) and not chunk_fits("splash", 24, 72)
    assert not chunk_fits(REFERENCE, 1, 72) and not chunk_fits("xla", 24, 72)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 2)])
def test_a_model_in_the_cudnn_form_gives_xla_logits_and_generations(shape, monkeypatch):
    """The whole decoder in the form: a padded forward's logits, and the sampler's chunked prefill (through the
    prefix call) giving XLA's greedy tokens and log-probs. On a 2 x 2 (fsdp x tensor) mesh of CPU devices it runs
    each device's rows and heads under shard_map (cuDNN's partitioner takes no split positions, and the residual
    stream between layers has them split)."""
    from rrm_jax.core.sharding import DEFAULT_RULES, make_mesh
    from rrm_jax.sampler import SamplingConfig, generate

    mesh = make_mesh(shape, devices=jax.devices()[: np.prod(shape)])
    xla = rrm_jax.init("tiny", seed=3, attention_impl="xla", mesh=mesh)
    cud = rrm_jax.init("tiny", seed=3, attention_impl=CudnnAttention("xla", mesh, DEFAULT_RULES), mesh=mesh)
    traced = {"_causal": [], "_prefix": []}
    for name, rows in traced.items():
        f = getattr(cudnn, name)
        monkeypatch.setattr(cudnn, name, lambda impl, q, *a, f=f, rows=rows: rows.append(q.shape[0]) or f(impl, q, *a))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, xla.config.vocab_size, (4, 48)).astype(np.int32)
    mask = np.ones((4, 48), bool)
    mask[1, 30:] = False
    mask[2, :11] = False
    want, got = (np.asarray(m.logits(ids, mask)) for m in (xla, cud))
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-5, rtol=1e-5)
    prompts = [rng.integers(1, xla.config.vocab_size, n).tolist() for n in (70, 33, 5, 64)]
    sc = SamplingConfig(max_new_tokens=3, temperature=0.0, add_eos_stop=False, max_slots=4)
    a, b = (generate(m, prompts, sc, prefill_chunk=32) for m in (xla, cud))
    assert all(traced.values()), traced
    if mesh.size > 1:  # per shard: fewer rows than a call's
        assert max(traced["_causal"] + traced["_prefix"]) < 4, traced
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    np.testing.assert_allclose(np.stack([c.logprobs for c in a]), np.stack([c.logprobs for c in b]), atol=1e-4)


def test_accelerator_defaults_are_chosen_by_platform(monkeypatch):
    """One place each chooses: "auto" attention is splash on a TPU mesh, cuDNN on a GPU where it compiles for the
    model's heads and dtype (else XLA's form), XLA's form on CPU, and "cudnn" off a GPU is a one-line config
    error; init's weights are bf16 on GPU/TPU and float32 on CPU; decode unrolls its layers on CPU and GPU."""
    from rrm_jax.core.api import default_dtype
    from rrm_jax.core.errors import ConfigError
    from rrm_jax.core.ops import attention_form
    from rrm_jax.core.splash import SplashAttention
    from rrm_jax.sampler.decode import unrolled_by_default

    mesh = lambda platform: SimpleNamespace(devices=np.array([SimpleNamespace(platform=platform)]))
    cfg = rrm_jax.core.config.resolve_config("tiny")
    tpu, gpu, cpu = mesh("tpu"), mesh("gpu"), jax.make_mesh((1,), ("data",))
    assert isinstance(attention_form("auto", tpu), SplashAttention) and attention_form("auto", tpu).mesh is tpu
    assert attention_form("auto", cpu, None, cfg, jnp.bfloat16) == "xla" and attention_form("xla", tpu) == "xla"
    assert isinstance(attention_form("splash", cpu), SplashAttention)
    assert [default_dtype(m) for m in (tpu, gpu, cpu)] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]
    assert [unrolled_by_default(m) for m in (tpu, gpu, cpu)] == [False, True, True]
    with pytest.raises(ConfigError, match="attention=cudnn runs on a GPU; this mesh is cpu"):
        attention_form("cudnn", cpu)

    asked = []
    monkeypatch.setattr(cudnn, "unavailable", lambda dev, *a: asked.append(a) or None)
    form = attention_form("auto", gpu, None, cfg, "bfloat16")
    assert isinstance(form, CudnnAttention) and form.mesh is gpu and form.implementation == "cudnn"
    assert asked == [(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, jnp.dtype(jnp.bfloat16))]
    monkeypatch.setattr(cudnn, "unavailable", lambda *a: "NotImplementedError: head dim")
    assert attention_form("auto", gpu, None, cfg, "bfloat16") == "xla"


def test_cudnn_says_why_it_cannot_run():
    """The probe's reasons off a GPU and for float32 (no compile is tried for either), and its compile on a
    backend without cuDNN: jax's refusal becomes the reason, not an exception."""
    cpu = jax.devices("cpu")[0]
    assert cudnn._compile_error(cpu, 4, 2, 16, jnp.dtype(jnp.bfloat16)) == "RuntimeError: cuDNN is not detected."
    assert "runs on a GPU, not on cpu" in cudnn.unavailable(cpu, 4, 2, 64, jnp.dtype(jnp.bfloat16))
    gpu = collections.namedtuple("Device", "platform")("gpu")  # hashable: the probe is cached per device
    assert "bfloat16 or float16, not float32" in cudnn.unavailable(gpu, 4, 2, 64, jnp.dtype(jnp.float32))
