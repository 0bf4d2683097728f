"""The CPU decode step's matmul kernel (rrm_jax.core.cpu_kernel): packing and products against NumPy, and the
decode step through it against the XLA decode step on every tiny architecture. The sampler's greedy tokens through
it are checked against transformers in test_sampler (a one-device CPU mesh uses the kernel)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rrm_jax.core import api, cpu_kernel
from rrm_jax.core.config import ModelConfig
from rrm_jax.core.kv_cache import KVCache
from rrm_jax.sampler import decode
from tiny_configs import TINY_CONFIGS, hf_config

pytestmark = pytest.mark.skipif(
    not cpu_kernel.available(), reason="the CPU matmul kernel needs x86-64 with AVX-512 and a C++ compiler"
)

# (rows, K, the concatenated inputs' column counts): full and partial 8-row blocks, panels split across inputs,
# column counts off the 16-float vector and the 48-column panel, K past the kernel's 64-row register sum
SHAPES = [(1, 7, [16]), (9, 300, [40, 8]), (17, 96, [64, 32, 32]), (8, 650, [96]), (3, 64, [5]), (13, 130, [30, 50, 7])]


def _reference_pack(ws: list[np.ndarray]) -> np.ndarray:
    w = np.concatenate(ws, axis=-1)
    lead, k, n = w.shape
    p = -(-n // cpu_kernel.PANEL)
    w = np.pad(w, ((0, 0), (0, 0), (0, p * cpu_kernel.PANEL - n)))
    return w.reshape(lead, k, p, cpu_kernel.PANEL).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("m,k,ns", SHAPES)
def test_pack_and_matmul_match_numpy(m, k, ns):
    rng = np.random.default_rng(m * k)
    x = rng.standard_normal((m, k), dtype=np.float32)
    ws = [rng.standard_normal((2, k, n), dtype=np.float32) for n in ns]
    packed = np.asarray(jax.jit(lambda ws: cpu_kernel.pack(*ws))(ws))
    np.testing.assert_array_equal(packed, _reference_pack(ws))
    transposed = [np.ascontiguousarray(w.transpose(0, 2, 1)) for w in ws]
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda ws: cpu_kernel.pack(*ws, transposed=True))(transposed)), _reference_pack(ws)
    )
    n = sum(ns)
    for layer in range(2):
        got = np.asarray(jax.jit(lambda x, p: cpu_kernel.matmul(x, p, n, layer))(x, packed))
        want = x.astype(np.float64) @ np.concatenate([w[layer] for w in ws], axis=-1).astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_bad_operands_are_refused():
    with pytest.raises(TypeError, match="float32"):
        cpu_kernel.pack(jnp.ones((4, 16), jnp.bfloat16))
    packed = cpu_kernel.pack(jnp.ones((2, 4, 16), jnp.float32))
    with pytest.raises(Exception, match="layer"):
        jax.jit(lambda x, p: cpu_kernel.matmul(x, p, 16, layer=2))(jnp.ones((1, 4), jnp.float32), packed)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_kernel_decode_step_equals_xla(name, mesh1):
    """Three decode steps over a heads-major cache: fused kernel weights against the per-layer XLA weights."""
    cfg = ModelConfig.from_hf_dict(hf_config(**TINY_CONFIGS[name]).to_dict())
    model = api.init(cfg, seed=1, mesh=mesh1, dtype=jnp.float32)
    b, slots = 3, 16
    rng = np.random.default_rng(0)

    def run(state, tokens, fused):
        mod = nnx.merge(model.graphdef, state)
        weights = decode.split_weights(mod, fused=fused)
        cache = KVCache.zeros(cfg, b, slots, jnp.float32, heads_major=True).per_layer()
        out = []
        for t in range(tokens.shape[1]):
            logits, cache = decode.step(mod, tokens[:, t], jnp.array([True, True, t != 1]), cache, weights)
            out.append(logits)
        return jnp.stack(out, 1), cache.stacked()

    run = jax.jit(run, static_argnums=2)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, 3)), jnp.int32)
    (want, want_cache), (got, got_cache) = run(model.state, tokens, False), run(model.state, tokens, True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_cache.k, want_cache.k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_cache.v, want_cache.v, rtol=1e-5, atol=1e-6)


def test_the_decode_form_is_unrolled_where_it_was_measured_faster():
    """Issue 26.2: the unrolled layer form is the default on CPU and GPU (measured faster on both: the decode
    benchmarks, docs/device-h200-decode.json) and the scan on TPU; `rrm-jax plan` asks the same function."""
    import types

    mesh = lambda platform: types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform=platform)]))
    assert [decode.unrolled_by_default(mesh(p)) for p in ("cpu", "gpu", "tpu")] == [True, True, False]
    rec = json.loads((Path(__file__).resolve().parents[1] / "docs" / "device-h200-decode.json").read_text())
    ms = {(r["batch"], r["unroll"]): r["ms_per_step"] for r in rec["default_flags"] if r["temperature"] == 0.0}
    assert all(ms[(b, True)] < ms[(b, False)] for b in (1, 32))  # the measurement the GPU default rests on
