"""The decoder's layer stack under full remat, with a backward pass that adds each layer's gradient into a buffer.

Gradient accumulation over micro-batches otherwise holds two stacked float32 gradients of every layer at once:
the accumulator, and the micro-batch's own, which autodiff's transposed layer scan writes whole before the two
are added (3.6 GiB per chip of rrm-32b's update on v5p-64, beside a 3.8 GiB accumulator). Here the backward
scan carries the accumulator itself and adds layer ``i``'s gradient into its row ``i`` in place, so the
micro-batch's stacked gradient never exists.

:func:`scan_layers` is that stack: its forward saves each layer's input (what ``remat = "full"`` saves), its
backward recomputes one layer at a time. The cotangent it reports for ``params`` is ``sink`` plus the true
gradient: the caller (the train step) passes its running sum and gets the new one back; without a sink
(``None``) it is the true gradient.

``offload`` (``remat = "offload"``) keeps the saved inputs in host memory: each layer's input is copied out as
the forward makes it and back as the backward reaches it. At RRM lengths they are the update's largest
per-token buffer (rrm-7b: 28 x 12288 x 3584 bf16 = 2.3 GiB per chip and row).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def scan_layers(layer, keep, offload: bool, params: dict, sink: dict | None, x: jax.Array, *context) -> jax.Array:
    """``x`` through ``layer(x, p, *context) -> x`` for each layer's slice ``p`` of the stacked ``params``.

    ``keep`` constrains the residual stream between layers (a ResidualSharding, or the identity). Under
    ``jax.grad`` the gradient reported for ``params`` is ``sink`` + d(loss)/d(params), in ``sink``'s dtype
    (d(loss)/d(params) alone when ``sink`` is None); ``sink`` itself and ``context`` (positions, masks) get none.
    ``offload``: the saved layer inputs live in host memory between the forward and the backward.
    """
    return _forward(layer, keep, params, x, context, lambda x: None)[0]


def _forward(layer, keep, params, x, context, save):
    def body(x, p):
        return keep(layer(x, p, *context)), save(x)

    return jax.lax.scan(body, keep(x), params)


def _scan_fwd(layer, keep, offload, params, sink, x, *context):
    save = (lambda x: jax.device_put(x, jax.memory.Space.Host)) if offload else (lambda x: x)
    out, inputs = _forward(layer, keep, params, x, context, save)
    return out, (params, sink, inputs, context)


def _scan_bwd(layer, keep, offload, res, ct):
    params, sink, inputs, context = res
    if sink is None:
        sink = jax.tree_util.tree_map(jnp.zeros_like, params)

    def body(carry, i):
        ct_x, acc = carry
        p = jax.tree_util.tree_map(lambda a: a[i], params)
        x = jax.device_put(inputs[i], jax.memory.Space.Device) if offload else inputs[i]
        _, vjp = jax.vjp(lambda p, x: layer(x, p, *context), p, x)
        ct_p, ct_x = vjp(ct_x)
        acc = jax.tree_util.tree_map(lambda a, g: a.at[i].add(g.astype(a.dtype)), acc, ct_p)
        return (keep(ct_x), acc), None

    n = jax.tree_util.tree_leaves(params)[0].shape[0]
    (ct_x, acc), _ = jax.lax.scan(body, (keep(ct), sink), jnp.arange(n), reverse=True)
    return (acc, None, ct_x) + (None,) * len(context)


scan_layers.defvjp(_scan_fwd, _scan_bwd)
