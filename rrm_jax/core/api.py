"""The public entry points: ``load``, ``init``, ``save_hf`` and the :class:`Model` they return.

A Model is a config, a sharded ``nnx.State`` of parameters, the ``nnx.GraphDef`` that turns it back into
a :class:`~rrm_jax.core.model.Qwen2`, the mesh it lives on and (optionally) a tokenizer. Everything heavy is a
pure function of ``(graphdef, state, ...)`` under ``jax.jit`` with explicit shardings.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from rrm_jax.core import hf_io, hub
from rrm_jax.core.config import ConfigError, ModelConfig, resolve_config
from rrm_jax.core.errors import CheckpointError
from rrm_jax.core.model import Qwen2
from rrm_jax.core.ops import attention_form
from rrm_jax.core.params import param_axes, param_name
from rrm_jax.core.sharding import DEFAULT_RULES, ResidualSharding, ShardingRules, as_auto
from rrm_jax.core.specs import model_spec
from rrm_jax.core.tokenizers import check_reload, load_tokenizer


@dataclasses.dataclass
class Model:
    config: ModelConfig
    graphdef: Any
    state: Any
    mesh: Mesh
    rules: ShardingRules = DEFAULT_RULES
    tokenizer: Any = None

    @property
    def module(self) -> Qwen2:
        return nnx.merge(self.graphdef, self.state)

    @property
    def param_dtype(self):
        return jax.tree_util.tree_leaves(self.state)[0].dtype

    @cached_property
    def state_shardings(self):
        return state_shardings(self.state, self.mesh, self.rules)

    def batch_sharding(self, ndim: int = 2, shape=None) -> NamedSharding:
        return self.rules.sharding(self.mesh, ("batch",) + (None,) * (ndim - 1), shape)

    def batch_multiple(self) -> int:
        """Batch sizes are padded to a multiple of the devices the batch is split over."""
        spec = self.rules.spec(("batch",), self.mesh)
        axes = spec[0] or ()
        axes = (axes,) if isinstance(axes, str) else axes
        return int(np.prod([self.mesh.shape[a] for a in axes])) if axes else 1

    @cached_property
    def _logits_fn(self):
        gd = self.graphdef

        def fwd(state, tokens, positions, mask):
            logits, _ = nnx.merge(gd, state)(tokens, positions, mask)
            return logits

        out = self.rules.sharding(self.mesh, ("batch", None, "vocab"))
        return jax.jit(fwd, out_shardings=out)

    def logits(self, token_ids, attention_mask=None, positions=None) -> jax.Array:
        """[B, T] token ids -> [B, T, V] float32 logits.

        ``attention_mask`` marks real tokens (left or right padding both work); ``positions`` default to the
        count of real tokens before each one, so a padded row gives the same logits at its real positions as
        the row alone. Shapes are bucketed (T to a power of two, B to the data-parallel size) to limit
        recompiles; the result is sliced back.
        """
        tokens = np.asarray(token_ids, dtype=np.int32)
        if tokens.ndim != 2:
            raise ValueError(f"token_ids must be [batch, time], got shape {tokens.shape}")
        b, t = tokens.shape
        mask = np.ones((b, t), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
        if mask.shape != (b, t):
            raise ValueError(f"attention_mask must have the shape of token_ids {tokens.shape}, got {mask.shape}")
        if positions is None:
            positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        positions = np.asarray(positions, np.int32)
        if (tokens >= self.config.vocab_size).any() or (tokens < 0).any():
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
        if positions.shape != (b, t):
            raise ValueError(f"positions must have the shape of token_ids {tokens.shape}, got {positions.shape}")
        # RoPE past the trained context gives plausible-looking but meaningless logits: refuse, like the sampler.
        # Only real tokens count: what a padding slot holds is masked out.
        limit, real = self.config.max_position_embeddings, positions[mask]
        if real.size and (real.max() >= limit or real.min() < 0):
            raise ValueError(
                f"token_ids of length {t} reach position {int(real.max())}; positions must lie in "
                f"[0, {limit}) (the model's max_position_embeddings={limit})"
            )
        bb = -(-b // self.batch_multiple()) * self.batch_multiple()
        tb = bucket(t)
        pad = ((0, bb - b), (0, tb - t))
        arrays = [np.pad(a, pad) for a in (tokens, positions, mask)]
        placed = [jax.device_put(a, self.batch_sharding(2, a.shape)) for a in arrays]
        return self._logits_fn(self.state, *placed)[:b, :t]

    def with_state(self, state) -> Model:
        """The same model with new parameters (e.g. from the trainer); shares graphdef, mesh and tokenizer."""
        return dataclasses.replace(self, state=state)


def bucket(n: int, minimum: int = 16) -> int:
    """Round a length up to a power of two (at least ``minimum``) so few shapes compile."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def state_shardings(state, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES):
    return jax.tree_util.tree_map_with_path(lambda path, x: rules.sharding(mesh, param_axes(path), x.shape), state)


def float_dtype(dtype, name: str = "dtype"):
    """``dtype`` as a JAX floating dtype, or a one-line ConfigError (``float33`` fails here, before any work)."""
    try:
        out = jnp.dtype(dtype)
    except TypeError:
        out = None
    if out is None or not jnp.issubdtype(out, jnp.floating):
        raise ConfigError(f"{name}={dtype!r} is not a floating-point dtype (use float32, bfloat16 or float16)")
    return out


def default_dtype(mesh: Mesh):
    """The weights' dtype where a caller names none (and so the KV cache's, which takes the compute dtype):
    bfloat16 on a GPU or TPU mesh, whose matmul units run it at full rate and whose decode steps read half the
    bytes (the H200 decode figures are bf16: README, "Accelerators"); float32 on CPU, where XLA emulates bf16
    matmuls more slowly than float32 ones. Checkpoints load in bfloat16 everywhere (``load``): a 7B model in
    float32 would not fit a 24 GiB host."""
    return jnp.dtype(jnp.bfloat16 if mesh.devices.flat[0].platform in ("gpu", "tpu") else jnp.float32)


def _abstract(cfg: ModelConfig, dtype, compute_dtype, attention_impl, remat, seed=0, mesh=None, rules=None):
    for value, name in ((dtype, "dtype"), (compute_dtype, "compute_dtype")):
        if value is not None:
            float_dtype(value, name)
    make = lambda: Qwen2(
        cfg,
        rngs=nnx.Rngs(seed),
        param_dtype=dtype,
        compute_dtype=compute_dtype,
        attention_impl=attention_form(attention_impl, mesh, rules, cfg, compute_dtype or dtype),
        remat=remat,
        residual=None if mesh is None else ResidualSharding.of(mesh, rules or DEFAULT_RULES),
    )
    return make, nnx.split(nnx.eval_shape(make))


def check_tokenizer_fits(cfg: ModelConfig, tokenizer) -> None:
    """Refuse a tokenizer paired by hand with a model whose embedding is smaller than its vocabulary: ids past the
    embedding would be clamped to its last row by the gather (silently other text). Its base vocabulary counts:
    added tokens may lie past the embedding, as real ones do (the DeepSeek-R1-Distill-Qwen tokenizer: 151,643
    base tokens, added ones numbered up to 152,063, beside Qwen2 embeddings of 151,936 rows)."""
    base = getattr(tokenizer, "vocab_size", None)
    if isinstance(base, int) and base > cfg.vocab_size:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"tokenizer {name} has {base} tokens but the model{' ' + cfg.name if cfg.name else ''} embeds "
            f"{cfg.vocab_size}: ids past that have no embedding; use the model's own tokenizer"
        )


def init(
    config_or_toml,
    *,
    seed: int = 0,
    mesh: Mesh | None = None,
    dtype=None,
    compute_dtype=None,
    tokenizer=None,
    rules: ShardingRules = DEFAULT_RULES,
    attention_impl: str = "auto",
    remat: str = "none",
) -> Model:
    """Random-init a model from a ``models/*.toml`` (path or preset name), an HF config or a ModelConfig.

    Parameters are created directly in their sharding inside ``jit`` (no host copy of the full model), in
    ``dtype`` (None: :func:`default_dtype` for the mesh).
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(f"init(seed={seed!r}): the seed must be an integer")
    cfg = resolve_config(config_or_toml)
    if tokenizer is not None:
        check_tokenizer_fits(cfg, tokenizer)
    mesh = as_auto(mesh)
    dtype = default_dtype(mesh) if dtype is None else dtype
    make, (graphdef, abstract) = _abstract(cfg, dtype, compute_dtype, attention_impl, remat, seed, mesh, rules)
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings)()
    return Model(cfg, graphdef, state, mesh, rules, tokenizer)


def load(
    path: str | Path,
    *,
    mesh: Mesh | None = None,
    dtype=jnp.bfloat16,
    compute_dtype=None,
    rules: ShardingRules = DEFAULT_RULES,
    attention_impl: str = "auto",
    remat: str = "none",
    tokenizer: Any = "auto",
    revision: str | None = None,
) -> Model:
    """Load an HF checkpoint (safetensors, single or sharded) straight into its sharding.

    ``path`` is a local directory or a hub id ``org/name`` (``@revision`` or ``revision=`` to pin one),
    resolved through the HF cache (:mod:`rrm_jax.core.hub`); a local directory of the same spelling wins.
    """
    path = hub.resolve(path, revision)
    cfg = ModelConfig.from_json(path / "config.json")
    mesh = as_auto(mesh)
    _, (graphdef, abstract) = _abstract(cfg, dtype, compute_dtype, attention_impl, remat, 0, mesh, rules)
    if tokenizer == "auto":  # before the weights, so a broken tokenizer file fails before the heavy part
        try:
            tokenizer = load_tokenizer(path)
        except (OSError, ValueError) as e:  # a corrupt tokenizer.json is a bare JSONDecodeError
            first = (str(e).strip().splitlines() or [""])[0]
            raise CheckpointError(f"{path}: cannot load its tokenizer ({type(e).__name__}: {first})") from None
    shardings = state_shardings(abstract, mesh, rules)
    state = hf_io.load_params(path, cfg, abstract, shardings, dtype)
    return Model(cfg, graphdef, state, mesh, rules, tokenizer)


def load_or_init(spec: str | Path, *, seed: int = 0, tokenizer: Any = None, **kw) -> Model:
    """What every command's ``--model`` means: a checkpoint directory or hub id (loaded), or a model TOML /
    preset name (random init, with ``tokenizer`` when given). ``kw`` goes to :func:`load` / :func:`init`."""
    s = model_spec(spec)
    if s.kind == "config":
        return init(str(spec), seed=seed, tokenizer=tokenizer, **kw)
    return load(Path(s.where) if s.kind == "checkpoint" else s.where, tokenizer=tokenizer or "auto", **kw)


def params_dict(model: Model) -> dict[str, jax.Array]:
    """Flat ``name -> array`` view of the parameters (names as in params.PARAMS)."""
    return {param_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(model.state)}


def save_hf(model: Model, out_dir: str | Path, *, dtype=None, max_shard_bytes: int = 4 << 30) -> Path:
    """Write ``config.json`` + safetensors (sharded when large) + tokenizer, loadable by transformers."""
    if model.tokenizer is not None:  # before anything is written: a tokenizer that would not reload as saved
        check_reload(model.tokenizer, model.config.to_hf_dict())
    params = params_dict(model)
    if dtype is not None:
        params = {k: v.astype(dtype) for k, v in params.items()}
    out = hf_io.save_checkpoint(out_dir, model.config, params, max_shard_bytes)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    return out
