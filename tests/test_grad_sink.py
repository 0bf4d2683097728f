"""The layer stack whose backward adds into a gradient buffer (core.grad_sink) against plain autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rrm_jax


def _close(actual, expected):
    # float32 sums in another order: the tolerance scales with the leaf's largest entry
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-6 * (1 + float(jnp.abs(expected).max())))


@pytest.mark.parametrize("remat", ["none", "full", "offload"])
def test_the_gradient_reported_is_the_sink_plus_autodiffs(mesh1, remat):
    """The reference is plain autodiff through the model without remat; ``offload`` (saved inputs in host memory)
    runs the sink's stack also without a sink, where it must report autodiff's gradient alone."""
    reference = rrm_jax.init("tiny", seed=0, mesh=mesh1)
    model = rrm_jax.init("tiny", seed=0, mesh=mesh1, remat=remat)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 500, (3, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [7], [1]]))  # full, right-padded, one token
    weights = jnp.asarray(rng.normal(size=(3, 12, model.config.hidden_size)), jnp.float32)
    layers = {k: v[...] for k, v in model.state["layers"].items()}
    sink = {k: jnp.asarray(rng.normal(size=v.shape), v.dtype) for k, v in layers.items()}

    def loss(params, graphdef, sink=None):
        hidden, _ = nnx.merge(graphdef, params)(tokens, None, mask, return_hidden=True, layer_grads=sink)
        return jnp.sum(hidden * weights)

    value, plain = jax.value_and_grad(loss)(reference.state, reference.graphdef)
    value_sink, summed = jax.value_and_grad(loss)(model.state, model.graphdef, sink)
    value_own, own = jax.value_and_grad(loss)(model.state, model.graphdef)
    np.testing.assert_allclose(value_sink, value, rtol=1e-6)
    np.testing.assert_allclose(value_own, value, rtol=1e-6)
    for name, s in sink.items():
        _close(summed["layers"][name][...], s + plain["layers"][name][...])
        _close(own["layers"][name][...], plain["layers"][name][...])
    for name in ("embed", "final_norm"):  # outside the stack: autodiff's own gradient, no sink
        _close(summed[name][...], plain[name][...])
    assert float(jnp.abs(plain["layers"]["q_proj"][...]).max()) > 0


def test_offload_with_splash_equals_xla_attentions_gradient(mesh1):
    """remat = "offload" keeps what the splash kernel names (its output and log-sum-exps) beside each layer's input,
    and its backward rebuilds each layer's pullback from them (that the compiled backward then runs no forward
    kernel is checked where the kernel compiles: tests/test_plan.py, libtpu). The gradient, splash in Pallas'
    interpret mode here, equals plain autodiff through XLA's attention."""
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 500, (2, 128)), jnp.int32)
    mask = jnp.asarray(np.arange(128)[None] < np.array([[128], [70]]))  # one full row, one right-padded
    reference = rrm_jax.init("tiny", seed=0, mesh=mesh1, attention_impl="xla")
    model = rrm_jax.init("tiny", seed=0, mesh=mesh1, remat="offload", attention_impl="splash")
    weights = jnp.asarray(rng.normal(size=(2, 128, reference.config.hidden_size)), jnp.float32) * mask[..., None]

    def grad(model):
        def loss(params):
            hidden, _ = nnx.merge(model.graphdef, params)(tokens, None, mask, return_hidden=True)
            return jnp.sum(hidden * weights)

        return jax.grad(loss)(model.state)

    want, got = grad(reference), grad(model)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "attn_norm"):
        _close(got["layers"][name][...], want["layers"][name][...])
