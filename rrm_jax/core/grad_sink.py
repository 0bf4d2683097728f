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

``offload`` (``remat = "offload"``) keeps what the stack saves in host memory: each layer's input, copied out as
the forward makes it and back as the backward reaches it, and the values the layer names :data:`SAVE` (the
splash kernel's output and log-sum-exps), so that the backward's recompute skips the attention's forward: the
kernel's backward takes them as they are. At RRM lengths the inputs are the update's largest per-token buffer
(rrm-7b: 28 x 12288 x 3584 bf16 = 2.3 GiB per chip and row).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

SAVE = "grad_sink_save"  # checkpoint_name of the values worth keeping across the recompute (offload only)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def scan_layers(layer, keep, offload: bool, params: dict, sink: dict | None, x: jax.Array, *context) -> jax.Array:
    """``x`` through ``layer(x, p, *context) -> x`` for each layer's slice ``p`` of the stacked ``params``.

    ``keep`` constrains the residual stream between layers (a ResidualSharding, or the identity). Under
    ``jax.grad`` the gradient reported for ``params`` is ``sink`` + d(loss)/d(params), in ``sink``'s dtype
    (d(loss)/d(params) alone when ``sink`` is None); ``sink`` itself and ``context`` (positions, masks) get none.
    ``offload``: the saved layer inputs and :data:`SAVE`-named values live in host memory between the forward
    and the backward.
    """
    return _forward(layer, keep, params, x, context, lambda x: None)[0]


def _forward(layer, keep, params, x, context, save):
    def body(x, p):
        return keep(layer(x, p, *context)), save(x)

    return jax.lax.scan(body, keep(x), params)


def _host(tree):
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, jax.memory.Space.Host), tree)


def _device(tree):
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, jax.memory.Space.Device), tree)


def _layer_keeping_saves(layer, context):
    policy = jax.checkpoint_policies.save_only_these_names(SAVE)
    return jax.checkpoint(lambda p, x: layer(x, p, *context), policy=policy)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Split:
    """Where a layer's pullback keeps each residual: ``jax.vjp`` of the layer under a checkpoint that saves only
    :data:`SAVE`-named values holds the layer's own inputs (weights, input, context) and those values. Only the
    values are stacked per layer; the backward rebuilds each pullback from them and the inputs it has anyway."""

    tree: jax.tree_util.PyTreeDef
    where: tuple[tuple[str, int], ...]  # ("p" | "x" | "c", index) for an input, ("s", 0) for a saved value

    @classmethod
    def of(cls, pullback, p, x, context):
        leaves, tree = jax.tree_util.tree_flatten(pullback)
        known = [(("p", j), a) for j, a in enumerate(jax.tree_util.tree_leaves(p))] + [(("x", 0), x)]
        known += [(("c", j), a) for j, a in enumerate(jax.tree_util.tree_leaves(context))]
        where = tuple(next((k for k, a in known if leaf is a), ("s", 0)) for leaf in leaves)
        return cls(tree, where), [leaf for leaf, w in zip(leaves, where) if w[0] == "s"]

    def pullback(self, p, x, context, saved):
        given = dict(p=jax.tree_util.tree_leaves(p), x=[x], c=jax.tree_util.tree_leaves(context))
        it = iter(saved)
        return jax.tree_util.tree_unflatten(
            self.tree, [next(it) if w[0] == "s" else given[w[0]][w[1]] for w in self.where]
        )


def _scan_fwd(layer, keep, offload, params, sink, x, *context):
    if not offload:
        out, inputs = _forward(layer, keep, params, x, context, lambda x: x)
        return out, (params, sink, inputs, None, context)
    fn, split = _layer_keeping_saves(layer, context), []

    def body(x, p):
        y, pullback = jax.vjp(fn, p, x)
        how, saved = _Split.of(pullback, p, x, context)
        split.append(how)
        return keep(y), (_host(x), _host(saved))

    out, (inputs, saved) = jax.lax.scan(body, keep(x), params)
    return out, (params, sink, inputs, (split[0], saved), context)


def _scan_bwd(layer, keep, offload, res, ct):
    params, sink, inputs, kept, context = res
    if sink is None:
        sink = jax.tree_util.tree_map(jnp.zeros_like, params)

    def body(carry, i):
        ct_x, acc = carry
        p = jax.tree_util.tree_map(lambda a: a[i], params)
        if offload:
            how, saved = kept
            pullback = how.pullback(p, _device(inputs[i]), context, _device([s[i] for s in saved]))
            ct_p, ct_x = pullback(ct_x)
        else:
            _, vjp = jax.vjp(lambda p, x: layer(x, p, *context), p, inputs[i])
            ct_p, ct_x = vjp(ct_x)
        acc = jax.tree_util.tree_map(lambda a, g: a.at[i].add(g.astype(a.dtype)), acc, ct_p)
        return (keep(ct_x), acc), None

    n = jax.tree_util.tree_leaves(params)[0].shape[0]
    (ct_x, acc), _ = jax.lax.scan(body, (keep(ct), sink), jnp.arange(n), reverse=True)
    return (acc, None, ct_x) + (None,) * len(context)


scan_layers.defvjp(_scan_fwd, _scan_bwd)
