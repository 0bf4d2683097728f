"""Sharding on 8 fake CPU devices: Explicit and Auto meshes give 1-device logits with params really split."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import numpy_reference as ref
import rrm_jax
from rrm_jax.core.config import ModelConfig
from rrm_jax.core.sharding import DEFAULT_RULES, MESH_AXES, as_auto, make_mesh
from tiny_configs import padded_batch

# Every sharded dim divides by 8: vocab 512, hidden 64, heads 8, kv heads 4, mlp 128.
CFG = ModelConfig(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=8,
    num_kv_heads=4,
    head_dim=16,
    rope_theta=1e4,
    tie_word_embeddings=False,
    name="shard-test",
)
SHAPES = [(8, 1, 1), (2, 4, 1), (1, 2, 4)]

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices; conftest sets XLA_FLAGS")


def _mesh(shape, kind):
    devices = jax.devices()[:8]
    if kind == "explicit":  # what jax.make_mesh builds by default in jax 0.10
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Explicit,) * 3, devices=devices)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@pytest.fixture(scope="module")
def reference(mesh1):
    model = rrm_jax.init(CFG, seed=3, mesh=mesh1)
    # scale weights up (init std 0.02 gives near-zero logits) so differences would show
    state = jax.tree.map(lambda x: x * 8.0 if x.ndim > 1 else x, model.state)
    model = model.with_state(state)
    rows = [np.random.default_rng(i).integers(0, CFG.vocab_size, n) for i, n in enumerate([13, 9, 4, 11])]
    ids, mask, positions = padded_batch(rows, "left")
    logits = np.asarray(model.logits(ids, mask, positions))
    assert np.max(np.abs(logits)) > 1.0
    return model, (ids, mask, positions), logits


def _shard_shape(x):
    return x.addressable_shards[0].data.shape


@pytest.mark.parametrize("kind", ["explicit", "auto"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_sharded_init_matches_one_device(reference, shape, kind):
    ref_model, (ids, mask, positions), want = reference
    mesh = _mesh(shape, kind)
    model = rrm_jax.init(CFG, seed=3, mesh=mesh)
    model = model.with_state(jax.tree.map(lambda x: x * 8.0 if x.ndim > 1 else x, model.state))
    params = rrm_jax.core.api.params_dict(model)
    ref_params = rrm_jax.core.api.params_dict(ref_model)
    data, fsdp, tensor = shape

    # the same numbers, split over the devices as the rules say
    for name, x in params.items():
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref_params[name]), err_msg=name)
        assert len(x.sharding.device_set) == 8, name
    emb, q, down = params["embed"], params["q_proj"], params["down_proj"]
    assert _shard_shape(emb) == (CFG.vocab_size // tensor, CFG.hidden_size // fsdp)
    assert _shard_shape(q) == (2, CFG.hidden_size // fsdp, CFG.num_heads // tensor, 16)
    assert _shard_shape(down) == (2, CFG.intermediate_size // tensor, CFG.hidden_size // fsdp)
    assert emb.sharding.spec == DEFAULT_RULES.spec(("vocab", "embed"), model.mesh, emb.shape)
    if fsdp * tensor > 1:  # something really is partitioned
        assert np.prod(_shard_shape(q)) * fsdp * tensor == np.prod(q.shape)
    assert model.batch_multiple() == data * fsdp

    got = np.asarray(model.logits(ids, mask, positions))
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-4 * np.max(np.abs(want)), rtol=0)


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_sharded_load_streams_each_shard(tmp_path_factory, mesh1, kind):
    """An HF checkpoint loads straight into a (1, 2, 4) mesh: same logits as the NumPy reference and as 1 device
    (NumPy, not torch, so that this runs on every Python and jax version)."""
    cfg = dict(
        model_type="qwen2",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=16,
        rope_theta=1e6,
        tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("hf")
    weights = ref.random_checkpoint(path, cfg, num_layers=2, seed=4)
    model = rrm_jax.load(path, mesh=_mesh((1, 2, 4), kind), dtype=jnp.float32, tokenizer=None)
    emb = rrm_jax.core.api.params_dict(model)["embed"]
    assert _shard_shape(emb) == (512 // 4, 64 // 2)
    shard_sets = {tuple(s.data.shape) for s in emb.addressable_shards}
    assert shard_sets == {(128, 32)} and len(emb.addressable_shards) == 8
    rows = [np.random.default_rng(5).integers(0, 512, n) for n in (10, 6)]
    ids, mask, positions = padded_batch(rows, "right")
    got = np.asarray(model.logits(ids, mask, positions))  # batch 2 is padded to the 2-device batch axis
    want = ref.logits(weights, cfg, ids, mask, positions)
    assert np.max(np.abs(got[mask] - want[mask])) <= 1e-4 * np.max(np.abs(want))
    one = rrm_jax.load(path, mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    np.testing.assert_allclose(got[mask], np.asarray(one.logits(ids, mask, positions))[mask], atol=1e-4)


def test_explicit_mesh_is_viewed_as_auto():
    mesh = _mesh((2, 4, 1), "explicit")
    auto = as_auto(mesh)
    assert all(t == AxisType.Auto for t in auto.axis_types)
    assert auto.axis_names == mesh.axis_names and (auto.devices == mesh.devices).all()
    assert as_auto(auto) is auto


def test_functional_forward_with_explicit_shardings(reference):
    """pjit-style: jit with in/out shardings on a (2, 2, 2) mesh, state donated in its own layout."""
    from flax import nnx

    ref_model, (ids, mask, positions), want = reference
    model = rrm_jax.init(CFG, seed=3, mesh=make_mesh((2, 2, 2)))
    state = jax.tree.map(lambda x: x * 8.0 if x.ndim > 1 else x, model.state)
    gd = model.graphdef
    batch = model.batch_sharding(2)
    fwd = jax.jit(
        lambda s, t, p, m: nnx.merge(gd, s)(t, p, m)[0],
        in_shardings=(model.state_shardings, batch, batch, batch),
        out_shardings=NamedSharding(model.mesh, P(("data", "fsdp"), None, "tensor")),
    )
    out = fwd(state, ids, positions, mask)
    assert out.sharding.spec == P(("data", "fsdp"), None, "tensor")
    np.testing.assert_allclose(np.asarray(out)[mask], want[mask], atol=1e-4 * np.max(np.abs(want)), rtol=0)


def test_rules_drop_axes_that_do_not_divide():
    mesh = make_mesh((1, 2, 4))
    # 14 heads over tensor=4 cannot split: replicated rather than an error
    assert DEFAULT_RULES.spec(("embed", "heads", "head_dim"), mesh, (64, 14, 64)) == P("fsdp", None, None)
    assert DEFAULT_RULES.spec(("embed", "heads", "head_dim"), mesh, (64, 16, 64)) == P("fsdp", "tensor", None)
    assert DEFAULT_RULES.spec(("batch", None), mesh, (6, 3)) == P("fsdp", None)
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh((2, 2, 4))
