"""The bench's mapping of our weights into Tunix's Qwen2 (runs where the [bench] extra, google-tunix, is installed).

Tunix's own forward on the mapped weights must give our logits, and its sampler our greedy tokens, on tiny
random models, tied and untied: then `rrm-jax bench generate` times both samplers on one model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tunix.models.qwen2.model", reason="google-tunix (the [bench] extra) is not installed")

from rrm_jax.benchmarks import tunix_ref  # noqa: E402
from rrm_jax.core import api  # noqa: E402
from rrm_jax.core.config import ModelConfig  # noqa: E402
from rrm_jax.core.sharding import make_mesh  # noqa: E402


def _model(tied: bool):
    cfg = ModelConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rope_theta=1e4,
        tie_word_embeddings=tied,
    )
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    return api.init(cfg, seed=3, mesh=mesh, dtype=jnp.float32)


@pytest.mark.parametrize("tied", [True, False])
def test_tunix_forward_on_mapped_weights_gives_our_logits(tied):
    model = _model(tied)
    ids = np.random.default_rng(0).integers(10, 290, size=(2, 12)).astype(np.int32)
    ours = np.asarray(model.logits(ids))
    tm = tunix_ref.tunix_model(model)
    t = ids.shape[1]
    positions = jnp.broadcast_to(jnp.arange(t), ids.shape)
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (2, t, t))
    theirs, _ = tm(jnp.asarray(ids), positions, None, causal)
    np.testing.assert_allclose(np.asarray(theirs), ours, atol=2e-5, rtol=2e-5)


def test_tunix_sampler_gives_our_greedy_tokens():
    from rrm_jax.sampler import SamplingConfig, generate

    model = _model(False)
    prompts = np.random.default_rng(1).integers(10, 290, size=(3, 16)).tolist()
    ours = generate(model, prompts, SamplingConfig(max_new_tokens=6, temperature=0.0, add_eos_stop=False))
    theirs = tunix_ref.bench_tunix(model, prompts, 6, repeats=1)["tokens"]
    assert [c.token_ids for c in ours] == theirs
