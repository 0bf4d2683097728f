"""A training checkpoint written on one mesh restores on another (issue 12, part 3): orbax reads every array
straight into the restoring run's shardings, so the saved state arrives bit for bit on (2,2,2) or (1,4,2) after
being written on (1,8,1), and training goes on from it as it would have on the old mesh (to float32 rounding: the
new mesh sums its shards in another order)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rrm_jax
from rrm_jax.core.api import params_dict
from rrm_jax.core.sharding import make_mesh
from rrm_jax.training.checkpoint import Checkpointer
from rrm_jax.training.config import GRPOConfig, OptimConfig, TrainConfig
from rrm_jax.training.trainer import Trainer

CFG = TrainConfig(
    mode="sft",
    steps=4,
    batch_size=8,
    seed=0,
    compute_dtype="float32",
    optim=OptimConfig(lr=3e-3, warmup_steps=0),
    grpo=GRPOConfig(seq_bucket=32),
)


def batch(k: int):
    rng = np.random.default_rng(k)
    prompts = [list(rng.integers(5, 400, 6)) for _ in range(8)]
    return prompts, [list(rng.integers(5, 400, 9)) for _ in range(8)]


def trainer(shape):
    mesh = make_mesh(shape, devices=jax.devices()[:8])
    return Trainer(rrm_jax.init("tiny", seed=0, mesh=mesh, dtype=jnp.float32, compute_dtype=jnp.float32), CFG)


def host(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (host) devices")
@pytest.mark.parametrize("target", [(2, 2, 2), (1, 4, 2)])
def test_checkpoint_restores_on_another_mesh(tmp_path, target):
    src = trainer((1, 8, 1))
    src.sft_step(*batch(0))
    ckpt = Checkpointer(tmp_path / "ckpt", async_=False)
    ckpt.save(1, src.state, {"iteration": 1})
    ckpt.close()

    dst = trainer(target)
    step, state, meta = Checkpointer(tmp_path / "ckpt").restore_latest(dst.state)
    assert step == 1 and meta == {"iteration": 1}
    # every array (params, AdamW moments, step, RNG) arrives bit for bit, laid out on the new mesh
    for a, b in zip(host(src.state), host(state)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    for x, t in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(dst.state)):
        assert x.sharding.is_equivalent_to(t.sharding, x.ndim) and dict(x.sharding.mesh.shape) == dict(
            zip(("data", "fsdp", "tensor"), target)
        )
    dst.state = state
    # the weights an HF export of the restored run writes are the saved run's, bit for bit
    exported = {k: np.asarray(v) for k, v in params_dict(dst.policy).items()}
    assert all(np.array_equal(exported[k], np.asarray(v)) for k, v in params_dict(src.policy).items())

    # The next step, the same batch on both meshes. Sharded sums add in another order, so the loss agrees to
    # float32 rounding and the new weights to well under a thousandth of one AdamW step (lr = 3e-3; measured
    # 4e-7 at most: Adam's m / sqrt(v) turns the last bit of a tiny gradient into a visible update)
    m_src, m_dst = src.sft_step(*batch(1)), dst.sft_step(*batch(1))
    assert m_dst["loss"] == pytest.approx(m_src["loss"], rel=1e-6)
    for name, a in params_dict(src.policy).items():
        b = params_dict(dst.policy)[name]
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=2e-6, err_msg=name)
