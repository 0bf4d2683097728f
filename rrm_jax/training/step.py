"""The functional train step: ``train_step(state, batch) -> (state, metrics)`` under one ``jax.jit``.

* State is a pure pytree (:class:`TrainState`): fp32 master params (an ``nnx.State``), a plain optax state
  whose shardings mirror the params', the step, the count of skipped steps and an RNG key. The NNX module
  only exists inside the jitted function (``nnx.merge(graphdef, params)``), so the jit boundary carries
  arrays alone: explicit in/out shardings and a donated state.
* The batch is split into micro-batches (strided, so each keeps the data-parallel sharding) and gradients
  are accumulated with ``lax.scan`` (under full or offload remat the layers' backward adds into the accumulator
  in place: core.grad_sink). Loss weights come from the whole batch first (see rl.loss), so the accumulated
  gradient equals the full-batch gradient whatever the aggregation mode.
* A non-finite loss or gradient norm leaves params and optimizer state untouched (the step is counted in
  ``skipped``); a NaN never reaches the weights, hence never a checkpoint.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rrm_jax.core.model import RECOMPUTES_LAYERS
from rrm_jax.core.sharding import LogitSharding
from rrm_jax.training.config import OptimConfig
from rrm_jax.training.objectives import Objective
from rrm_jax.training.rl.loss import mean_weights, sequence_logprobs


@struct.dataclass
class TrainState:
    step: jax.Array  # int32: train_step calls so far (applied or skipped)
    params: Any  # nnx.State of nnx.Param (fp32 master weights)
    opt_state: Any  # optax state
    rng: jax.Array  # uint32 key data (raw, so orbax stores it like any array)
    skipped: jax.Array  # int32: steps whose loss or gradient was not finite


def _no_decay(path) -> bool:
    names = [getattr(k, "key", getattr(k, "name", "")) for k in path]
    return any(str(n).endswith(("norm", "bias")) for n in names)


@functools.cache
def make_optimizer(cfg: OptimConfig, total_updates: int) -> tuple[optax.GradientTransformation, Any]:
    """AdamW with linear warm-up + cosine decay and global-norm clipping; returns (tx, schedule). One object per
    (config, updates): the trainer's state and every step built for it share it."""
    decay = cfg.decay_steps or max(total_updates, 1)
    schedule = optax.warmup_cosine_decay_schedule(
        # lr/W, not 0: optax evaluates the schedule at the update count, so a 0 start wastes the first update
        init_value=cfg.lr / cfg.warmup_steps if cfg.warmup_steps else cfg.lr,
        peak_value=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(decay, cfg.warmup_steps + 1),
        end_value=cfg.lr * cfg.end_lr_ratio,
    )
    mask = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: not _no_decay(p), params)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask))
    return optax.chain(*parts), schedule


def train_state_shardings(model, tx, abstract_params=None) -> TrainState:
    """Shardings of a TrainState: params by the model's rules (``model.state_shardings``), optimizer moments
    mirror them."""
    rep = NamedSharding(model.mesh, P())
    params_sh = model.state_shardings
    abstract_params = abstract_params if abstract_params is not None else jax.eval_shape(lambda s: s, model.state)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sh = optax.tree_map_params(
        tx,
        lambda _, s: s,
        abstract_opt,
        params_sh,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
    )
    return TrainState(step=rep, params=params_sh, opt_state=opt_sh, rng=rep, skipped=rep)


def init_state(model, tx, seed: int = 0) -> TrainState:
    """A fresh TrainState holding a COPY of the model's params (the step donates its state)."""
    sh = train_state_shardings(model, tx)

    def make(params):
        params = jax.tree_util.tree_map(lambda x: x + 0, params)  # fresh buffers, the model keeps its own
        key = jax.random.key_data(jax.random.key(seed))
        return TrainState(jnp.int32(0), params, tx.init(params), key, jnp.int32(0))

    return jax.jit(make, out_shardings=sh)(model.state)


def batch_shardings(model, keys) -> dict[str, NamedSharding]:
    ndim = {"advantages": 1}
    return {k: model.batch_sharding(ndim.get(k, 2)) for k in keys}


def _split(x: jax.Array, k: int, sharding_spec) -> jax.Array:
    # [B, ...] -> [k, B/k, ...] taking rows i*k + j into micro-batch j: every micro-batch spans all data shards.
    y = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(y, sharding_spec(y.ndim))


def _in_layers(path) -> bool:
    return getattr(path[0], "key", None) == "layers"


_CACHE: dict = {}


def _signature(model) -> tuple:
    leaves = jax.tree_util.tree_leaves(model.state)
    return (model.graphdef, model.mesh, model.rules, tuple((x.shape, str(x.dtype)) for x in leaves))


def cached(kind_name: str, model, key: tuple, build):
    """Compiled functions depend on the graph, mesh, rules and hyper-parameters, never on param values:
    new Trainers for the same model (a resumed run, the demo's SFT then GRPO phases) reuse them."""
    full = (kind_name, _signature(model)) + key
    if full not in _CACHE:
        _CACHE[full] = build()
    return _CACHE[full]


def make_train_step(
    model, optim: OptimConfig, total_updates: int, objective: Objective, *, micro_batches: int = 1, donate: bool = True
):
    """A jitted ``train_step(state, batch) -> (state, metrics)`` minimising ``objective`` (training.objectives;
    the batch holds its ``keys``; a DPO batch needs ``micro_batches`` to divide its pair slots, see rl.dpo).

    The optimizer is ``make_optimizer(optim, total_updates)``; states from :func:`init_state` with it fit.
    """
    key = (optim, total_updates, objective, micro_batches, donate)
    return cached(
        "train_step",
        model,
        key,
        lambda: _make_train_step(model, optim, total_updates, objective, micro_batches, donate),
    )


def _make_train_step(model, optim, total_updates, objective, micro_batches, donate):
    tx, schedule = make_optimizer(optim, total_updates)
    graphdef = model.graphdef
    # Under full remat (offload's too) the layers' backward can add into the accumulator itself (core.grad_sink):
    # no second stacked float32 gradient per micro-batch.
    sink = micro_batches > 1 and model.module.remat in RECOMPUTES_LAYERS
    mesh, rules = model.mesh, model.rules
    layout = LogitSharding.of(mesh, rules)

    def micro_spec(ndim):
        return rules.sharding(mesh, (None, "batch") + (None,) * (ndim - 2))

    def loss_fn(params, mb, layer_grads=None):
        module = nnx.merge(graphdef, params)
        logp, ent = sequence_logprobs(
            module, mb["tokens"], mb["positions"], mb["mask"], mb["targets"], objective.chunk, layer_grads, layout
        )
        loss, metrics = objective.loss(logp, mb)
        metrics["entropy"] = jnp.sum(mb["mw"] * ent * mb["loss_mask"])
        metrics["loss"] = loss
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict):
        batch = dict(batch)
        m = batch["loss_mask"]
        batch["w"] = objective.weights(m)
        batch["mw"] = mean_weights(m)
        if micro_batches == 1:
            (_, metrics), grads = grad_fn(state.params, batch)
        else:
            mbs = {k: _split(v, micro_batches, micro_spec) for k, v in batch.items()}
            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            _, shapes = jax.eval_shape(grad_fn, state.params, {k: v[0] for k, v in mbs.items()})[0]
            mzeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            def body(carry, mb):
                g_acc, m_acc = carry
                if sink:
                    (_, met), g = grad_fn(state.params, mb, {k: v[...] for k, v in g_acc["layers"].items()})
                    # g's layers already hold g_acc's plus this micro-batch's: their backward added in place
                    g = jax.tree_util.tree_map_with_path(lambda path, a, b: b if _in_layers(path) else a + b, g_acc, g)
                else:
                    (_, met), g = grad_fn(state.params, mb)
                    g = jax.tree_util.tree_map(jnp.add, g_acc, g)
                return (g, jax.tree_util.tree_map(jnp.add, m_acc, met)), None

            (grads, metrics), _ = jax.lax.scan(body, (zeros, mzeros), mbs)
        loss = metrics["loss"]
        gnorm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
        applied = state.step - state.skipped
        new_state = TrainState(
            step=state.step + 1,
            params=keep(new_params, state.params),
            opt_state=keep(new_opt, state.opt_state),
            rng=state.rng,
            skipped=state.skipped + (~ok).astype(jnp.int32),
        )
        metrics = dict(
            metrics,
            grad_norm=gnorm,
            lr=jnp.asarray(schedule(applied), jnp.float32),
            skipped=(~ok).astype(jnp.int32),
            tokens=jnp.sum(m.astype(jnp.int32)),
        )
        return new_state, metrics

    rep = NamedSharding(mesh, P())
    st_sh = train_state_shardings(model, tx)
    fn = jax.jit(
        step,
        in_shardings=(st_sh, batch_shardings(model, objective.keys)),
        out_shardings=(st_sh, rep),
        donate_argnums=(0,) if donate else (),
    )
    return fn


def make_logprob_fn(model, chunk: int = 256, micro_batches: int = 1):
    """Jitted ``(params, batch) -> [B, T]`` log-probs of the batch's targets (old-policy / reference pass).

    ``micro_batches`` > 1 runs the rows in that many strided slices one after another (as the update does), so
    the pass holds one micro-batch's activations, not the whole batch's (``rrm-jax plan`` found the 7B recipe's
    whole-batch pass needing TBs per chip); a row count it does not divide runs whole."""
    return cached("logprob", model, (chunk, micro_batches), lambda: _make_logprob_fn(model, chunk, micro_batches))


def _make_logprob_fn(model, chunk, micro_batches=1):
    graphdef, mesh, rules = model.graphdef, model.mesh, model.rules
    layout = LogitSharding.of(mesh, rules)

    def one(params, tokens, positions, mask, targets):
        lp, _ = sequence_logprobs(nnx.merge(graphdef, params), tokens, positions, mask, targets, chunk, layout=layout)
        return lp

    def fwd(params, tokens, positions, mask, targets):
        k = micro_batches
        if k == 1 or tokens.shape[0] % k:
            return one(params, tokens, positions, mask, targets)
        spec = lambda ndim: rules.sharding(mesh, (None, "batch") + (None,) * (ndim - 2))
        mbs = [_split(x, k, spec) for x in (tokens, positions, mask, targets)]
        out = jax.lax.map(lambda mb: one(params, *mb), mbs)  # [k, B/k, T], micro-batch j = rows i*k + j
        return out.swapaxes(0, 1).reshape(tokens.shape[0], *out.shape[2:])

    b2 = model.batch_sharding(2)
    return jax.jit(fwd, in_shardings=(model.state_shardings, b2, b2, b2, b2), out_shardings=b2)


def place_batch(model, batch: dict[str, np.ndarray], keys) -> dict[str, jax.Array]:
    """Host arrays -> device arrays in the batch sharding (only ``keys``)."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}")
    return {k: jax.device_put(np.asarray(batch[k]), model.batch_sharding(np.ndim(batch[k]))) for k in keys}
