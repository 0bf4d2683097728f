"""A recipe's device programs, compiled ahead of time for a mesh of (compile-only) devices, nothing allocated.

The seam is :class:`rrm_jax.core.api.Model` itself: its ``state`` may be a tree of ``jax.ShapeDtypeStruct``
carrying the recipe's shardings, and every builder the trainer and sampler use (``make_train_step``,
``make_logprob_fn``, :class:`~rrm_jax.sampler.loop.SamplerLoop`) only reads shapes, dtypes and shardings from
it. So the programs planned here are the very ones a run compiles, lowered on abstract arguments at the
worst-case shapes the recipe allows (longest rows, every slot full, full-cache attention window).
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rrm_jax.core import shipped
from rrm_jax.core.api import Model, bucket, state_shardings
from rrm_jax.core.config import ModelConfig, resolve_config
from rrm_jax.core.errors import ConfigError
from rrm_jax.core.model import Qwen2
from rrm_jax.core.ops import attention_form
from rrm_jax.core.sharding import DEFAULT_RULES, ResidualSharding, ShardingRules
from rrm_jax.core.specs import model_spec
from rrm_jax.sampler.decode import unrolled_by_default
from rrm_jax.sampler.loop import LoopParams, PrefillChunk, SamplerLoop, SlotParams
from rrm_jax.sampler.planner import plan
from rrm_jax.training.config import TrainConfig
from rrm_jax.training.modes import mode_of
from rrm_jax.training.step import TrainState, make_logprob_fn, make_optimizer, make_train_step, train_state_shardings

SUFFIX_LEN = 12  # the forced suffix "\n</think>\n\n\\boxed{Assistant " is 9-12 tokens in Qwen2 tokenizers


@dataclasses.dataclass
class Program:
    """One compiled program's per-device figures (bytes, FLOPs), and how often a step runs it."""

    name: str
    calls: float  # per training step (rollout batch)
    argument: int
    output: int
    alias: int
    temp: int
    code: int
    resident: int  # bytes of other live buffers while it runs (train state, reference, judge ...)
    flops: float  # per device per call, from cost_analysis()
    bytes_accessed: float
    note: str = ""
    shapes: dict = dataclasses.field(default_factory=dict)  # what roofline.program_cost needs
    role: str = "policy"  # policy | judge: whose architecture it runs
    host: int = 0  # temporaries in host memory (remat = "offload": what the backward reuses); not in ``peak``

    @property
    def peak(self) -> int:
        return self.argument + self.output - self.alias + self.temp + self.code + self.resident


def model_config(spec: str) -> ModelConfig:
    """A recipe's ``model`` as an architecture, without weights: a preset / models TOML / checkpoint directory,
    or a hub id whose name is a shipped preset (``deepseek-ai/DeepSeek-R1-Distill-Qwen-7B`` ->
    models/deepseek-r1-distill-qwen-7b.toml), so planning needs no download."""
    try:
        kind = model_spec(spec).kind
    except ConfigError:
        kind = None
    if kind in ("checkpoint", "config"):
        return resolve_config(spec)
    preset = spec.split("@")[0].split("/")[-1].lower()
    if kind == "hub" and shipped.find(preset, "models") is not None:
        return resolve_config(preset)
    raise ConfigError(
        f"model={spec!r}: no shape for it here (not a preset, models TOML, checkpoint directory, "
        f"or hub id named like a preset: {', '.join(shipped.names('models'))})"
    )


def abstract_model(
    cfg: ModelConfig, mesh, dtype, compute_dtype, remat: str, attention: str, rules: ShardingRules = DEFAULT_RULES
) -> Model:
    """A Model whose state is ShapeDtypeStructs in the recipe's shardings: nothing is allocated."""
    make = lambda: Qwen2(
        cfg,
        rngs=nnx.Rngs(0),
        param_dtype=dtype,
        compute_dtype=compute_dtype,
        attention_impl=attention_form(attention, mesh, rules, cfg, compute_dtype or dtype),
        remat=remat,
        residual=ResidualSharding.of(mesh, rules),
    )
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    sh = state_shardings(abstract, mesh, rules)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, sh)
    return Model(cfg, graphdef, state, mesh, rules)


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard: uneven splits pad)."""
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


def _sds(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def cast(tree, dtype):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding), tree)


def _measure(name, lowered, args, calls, resident, note="", **kw) -> Program:
    """Compile ``lowered`` and read its figures. A TPU compile that cannot fit HBM is refused by XLA itself: that
    becomes a Program with the temporaries the compiler said it needed (``refused`` in its note)."""
    try:
        compiled = lowered.compile()
    except Exception as e:  # JaxRuntimeError; its text is all there is to read
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg:
            raise
        need = _bytes_in(msg)
        # the error's first line names the kind, the second the op that could not be placed
        first = " ".join(line.strip() for line in msg.strip().splitlines()[:2])[:400]
        return Program(
            name,
            calls,
            device_bytes(args),
            0,
            0,
            need,
            0,
            int(resident),
            0.0,
            0.0,
            f"REFUSED by the compiler: {first}",
            **kw,
        )
    ma = compiled.memory_analysis()
    ca = compiled.cost_analysis()
    ca = (ca[0] if ca else {}) if isinstance(ca, (list, tuple)) else (ca or {})
    return Program(
        name,
        calls,
        int(ma.argument_size_in_bytes),
        int(ma.output_size_in_bytes),
        int(ma.alias_size_in_bytes),
        int(ma.temp_size_in_bytes),
        int(ma.generated_code_size_in_bytes),
        int(resident),
        float(ca.get("flops", 0.0)),
        float(ca.get("bytes accessed", 0.0)),
        note,
        host=int(ma.host_temp_size_in_bytes),
        **kw,
    )


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _bytes_in(msg: str) -> int:
    """The bytes XLA's out-of-memory message says a program needs ("... required for HLO temporaries (423.62G)
    exceeds ..." or "Used 101.5G of 95.7G hbm"); 0 when it names none."""
    m = re.search(r"required[^(]*\((\d+(?:\.\d+)?)([KMGT]?)\)", msg) or re.search(r"Used (\d+(?:\.\d+)?)([KMGT]?)", msg)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0


def train_shapes(cfg: TrainConfig, model: Model) -> tuple[int, int]:
    """(rows, row length) of the recipe's update batch, as the Trainer pads it."""
    return mode_of(cfg).batch_shape(cfg, cfg.optim.micro_batches * model.batch_multiple(), SUFFIX_LEN)


def _batch(model: Model, keys, rows: int, t: int) -> dict:
    dtypes = {
        "tokens": jnp.int32,
        "targets": jnp.int32,
        "positions": jnp.int32,
        "mask": jnp.bool_,
        "loss_mask": jnp.bool_,
        "old_logp": jnp.float32,
        "ref_logp": jnp.float32,
        "advantages": jnp.float32,
    }
    return {
        k: jax.ShapeDtypeStruct(
            (rows,) if k == "advantages" else (rows, t),
            dtypes[k],
            sharding=model.batch_sharding(1 if k == "advantages" else 2),
        )
        for k in keys
    }


def train_state(cfg: TrainConfig, model: Model, total_updates: int) -> TrainState:
    """The TrainState as ShapeDtypeStructs in their shardings (train_state_shardings' layout)."""
    tx, _ = make_optimizer(cfg.optim, total_updates)
    key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    state = jax.eval_shape(lambda p: TrainState(jnp.int32(0), p, tx.init(p), key, jnp.int32(0)), model.state)
    return _sds(state, train_state_shardings(model, tx))


def update_step(cfg: TrainConfig, model: Model, total_updates: int):
    """The recipe's jitted update step and its abstract batch at the worst-case shape."""
    objective = mode_of(cfg).objective(cfg)
    fn = make_train_step(model, cfg.optim, total_updates, objective, micro_batches=cfg.optim.micro_batches)
    return fn, _batch(model, objective.keys, *train_shapes(cfg, model))


def update_programs(
    cfg: TrainConfig, model: Model, state: TrainState, total_updates: int, *, resident: int, logprob_resident: int
) -> list[Program]:
    """The update step, and the trainer-side log-prob passes (old policy, reference) a step makes."""
    mode = mode_of(cfg)
    rows, t = train_shapes(cfg, model)
    fn, batch = update_step(cfg, model, total_updates)
    shapes = dict(rows=rows, row_tokens=t, micro_batches=cfg.optim.micro_batches)
    progs = [
        _measure(
            f"{mode.name} update",
            fn.lower(state, batch),
            (state, batch),
            mode.updates_per_step(cfg),
            resident,
            f"{rows} rows x {t} tokens, {cfg.optim.micro_batches} micro-batches, remat={cfg.remat}",
            shapes=shapes,
        )
    ]
    passes = mode.logprob_passes(cfg)
    if passes:
        lp = make_logprob_fn(model, cfg.grpo.logprob_chunk, cfg.optim.micro_batches)  # as Trainer.logprobs
        args = (state.params, *[batch[k] for k in ("tokens", "positions", "mask", "targets")])
        progs.append(
            _measure(
                "log-probs",
                lp.lower(*args),
                args,
                passes,
                logprob_resident,
                f"{passes} pass(es): old policy / reference over the update batch",
                shapes=shapes,
            )
        )
    return progs


def rollout_programs(
    label: str,
    model: Model,
    params,
    cdt,
    *,
    requests: int,
    n: int,
    max_slots: int,
    prompt_len: int,
    max_new: int,
    budget: bool,
    resident: int,
    calls_per_step: float = 1.0,
    role: str = "policy",
) -> tuple[list[Program], dict]:
    """The sampler's prefill (every slot refilled at once, one prompt bucket) and one decode step per slot, at the
    shapes the engine plans for this workload (rrm_jax.sampler.planner.plan)."""
    pl = plan(
        requests=requests,
        max_slots=max_slots,
        batch_multiple=model.batch_multiple(),
        prompt_len=prompt_len,
        max_new=max_new,
        suffix_len=SUFFIX_LEN if budget else 0,
        think_end_len=1,
        n_stops=1,
    )
    shape, chunk = pl.shape, pl.prefill_chunk
    b, s, m, tb = shape.slots, shape.cache_len, shape.max_out, shape.prompt_len
    unroll = unrolled_by_default(model.mesh)  # SamplerLoop.for_model's choice for the mesh
    loop = SamplerLoop(model.graphdef, model.config, model.mesh, model.rules, shape, jnp.dtype(cdt), unroll)
    state = _sds(jax.eval_shape(loop.init_state), loop.state_shardings())
    rep = NamedSharding(model.mesh, P())
    r = lambda shp, dt: jax.ShapeDtypeStruct(shp, dt, sharding=rep)
    pb = bucket(-(-b // n), minimum=1)  # distinct prompts per slot-full (n samples share a prefill)
    rc = min(pl.prefill_rows, bucket(pb, minimum=1))
    rows_r = lambda: r((rc,), jnp.int32)
    slots_r = lambda dt=jnp.int32: r((b,), dt)
    batch = PrefillChunk(
        tokens=r((rc, chunk), jnp.int32),
        lens=rows_r(),
        start=rows_r(),
        home=rows_r(),
        row=rows_r(),
        dest=slots_r(),
        src=slots_r(),
        prompt=slots_r(),
        sample=slots_r(),
        params=SlotParams(
            temperature=slots_r(jnp.float32),
            top_p=slots_r(jnp.float32),
            min_p=slots_r(jnp.float32),
            budget=slots_r(),
            limit=slots_r(),
            seed=slots_r(),
            stops=r((b, shape.n_stops), jnp.int32),
        ),
    )
    sp = LoopParams(
        suffix=r((shape.suffix_cap,), jnp.int32),
        suffix_len=r((), jnp.int32),
        think_end=r((shape.window,), jnp.int32),
        probes=r((0,), jnp.int32),
    )
    waves = -(-requests // b)  # each slot-full of requests: its prompts' chunks and up to max_new decode steps
    chunks = pb * (-(-tb // chunk))  # per slot-full, every prompt at the bucket's length
    chunk_calls = -(-chunks // rc)
    # its worst case: the last chunk of a prompt at the bucket's length attends the whole prompt (the scheduler's
    # window never passes the prompt bucket; the cache beyond it is the outputs')
    pre = SamplerLoop.prefill.lower(loop, params, state, batch, sp, window=tb)
    rows = jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=model.rules.sharding(model.mesh, ("batch",), (b,)))
    weights = jax.eval_shape(loop.split_weights, params)  # None off CPU (the decode scans the stacked layers)
    dec = SamplerLoop.decode.lower(loop, params, weights, state, sp, rows, r((), jnp.int32), r((), jnp.int32), window=s)
    shapes = dict(prefill_rows=rc, prefill_chunk=chunk, prompt_bucket=tb, slots=b, cache_len=s)
    progs = [
        _measure(
            f"{label} prefill",
            pre,
            (params, state, batch),
            waves * chunk_calls * calls_per_step,
            resident,
            f"{chunk_calls} chunk calls of {rc} prompts x {chunk} tokens per {b} slots",
            shapes=shapes,
            role=role,
        ),
        _measure(
            f"{label} decode",
            dec,
            (params, state),
            waves * m * calls_per_step,
            resident,
            f"one step of {b} slots over a {s}-token cache (worst case: every row runs {m} tokens)",
            shapes=shapes,
            role=role,
        ),
    ]
    return progs, dict(
        slots=b, cache_len=s, prompt_bucket=tb, requests=requests, kv_cache_bytes=device_bytes(state.cache)
    )


def judge_requests(cfg: TrainConfig) -> int:
    """Comparisons per rollout batch for a policy recipe's tournament reward, times the votes."""
    g, kind = cfg.grpo, cfg.grpo.reward
    per_group = {
        "judge_elo": g.group_size * (g.group_size - 1) // 2,
        "judge_knockout": g.group_size - 1,
        "judge_reference": g.group_size,
    }[kind]
    return g.prompts_per_step * per_group * cfg.judge.votes
