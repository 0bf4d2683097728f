"""Model exactness against the float64 NumPy re-derivation (no torch): it runs on every Python, so the parity of
the decoder and of HF-checkpoint loading is checked on the newest jax too. The torch reference
(test_model.py) covers the same ground where torch is installed."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
import rrm_jax
from tiny_configs import TINY_CONFIGS, padded_batch


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_loaded_checkpoint_matches_numpy(name, tmp_path, mesh1):
    cfg = TINY_CONFIGS[name]
    weights = ref.random_checkpoint(tmp_path, cfg, num_layers=2, seed=3)
    model = rrm_jax.load(tmp_path, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, cfg["vocab_size"], n) for n in (11, 5, 8)]
    for side in ("left", "right"):
        ids, mask, pos = padded_batch(rows, side)
        got = np.asarray(model.logits(ids, attention_mask=mask))
        want = ref.logits(weights, cfg, ids, mask, pos)
        scale = np.abs(want).max()
        assert scale > 5  # the scaled-up weights make a wrong detail a large difference
        np.testing.assert_allclose(got[mask], want[mask], atol=2e-4 * scale, rtol=0)


def test_export_round_trips_through_numpy(tmp_path, mesh1):
    """init -> save_hf -> the NumPy model on the exported tensors gives rrm-jax's own logits (key map, transposes)."""
    import safetensors.numpy

    model = rrm_jax.init("tiny", seed=1, mesh=mesh1)
    out = rrm_jax.save_hf(model, tmp_path / "hf")
    weights = {}
    for f in sorted(out.glob("*.safetensors")):
        weights |= safetensors.numpy.load_file(str(f))
    c = model.config
    cfg = dict(
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        rope_theta=c.rope_theta,
    )
    ids = np.random.default_rng(1).integers(0, c.vocab_size, (2, 9))
    np.testing.assert_allclose(np.asarray(model.logits(ids)), ref.logits(weights, cfg, ids), atol=1e-4)
