"""The parameter table: every weight of the decoder, described once.

Each :class:`ParamSpec` gives a parameter's shape (from the config), logical axes (for
:mod:`rrm_jax.core.sharding`), initialiser, HF checkpoint key and the HF <-> ours layout transforms, and
whether a config has it at all. The model's init, the sharding of its state, HF loading and export and
the helpers below all read this table; a new parameter (say an o_proj bias) is one new entry here plus
the maths that uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rrm_jax.core.config import ModelConfig

Transform = Callable[[np.ndarray, ModelConfig], np.ndarray]


def normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype) -> jax.Array:
    # drawn in float32 then cast, so a seed gives the same values whatever the param dtype
    return (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


def ones(rngs: nnx.Rngs, shape: tuple[int, ...], dtype) -> jax.Array:
    return jnp.ones(shape, dtype)


def _same(w, c):
    return w


def _t(w, c):
    return w.T


def _always(cfg: ModelConfig) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter. ``hf_key`` has a ``{}`` for the layer index when the parameter is stacked over layers;
    ``to_ours`` / ``to_hf`` map one HF tensor (one layer's slice when stacked) to our layout and back, as
    numpy views where possible so slicing a device's shard afterwards copies only that shard."""

    shape: Callable[[ModelConfig], tuple[int, ...]]
    logical_axes: tuple[str | None, ...]
    init: Callable[[nnx.Rngs, tuple[int, ...], Any], jax.Array]
    hf_key: str
    to_ours: Transform = _same
    to_hf: Transform = _same
    present: Callable[[ModelConfig], bool] = _always

    @property
    def stacked(self) -> bool:
        """Whether it carries the leading ``layers`` axis (one slice per decoder layer)."""
        return self.logical_axes[0] == "layers"

    def hf_name(self, layer: int | None = None) -> str:
        return self.hf_key.format(layer) if self.stacked else self.hf_key

    def initial(self, cfg: ModelConfig, rngs: nnx.Rngs, dtype) -> jax.Array:
        return self.init(rngs, self.shape(cfg), dtype)


def _proj_in(heads: Callable[[ModelConfig], int]) -> dict:
    """q/k/v projections: HF [N*hd, D] <-> ours [D, N, hd]."""
    return dict(
        to_ours=lambda w, c: w.reshape(heads(c), c.head_dim, c.hidden_size).transpose(2, 0, 1),
        to_hf=lambda w, c: w.transpose(1, 2, 0).reshape(-1, c.hidden_size),
    )


def _bias(heads: Callable[[ModelConfig], int]) -> dict:
    """q/k/v biases: HF [N*hd] <-> ours [N, hd]."""
    return dict(to_ours=lambda b, c: b.reshape(heads(c), c.head_dim), to_hf=lambda b, c: b.reshape(-1))


def _heads(c):
    return c.num_heads


def _kv_heads(c):
    return c.num_kv_heads


def _has_bias(c):
    return c.qkv_bias


_ATTN = "model.layers.{}.self_attn."
_MLP = "model.layers.{}.mlp."

# Table order is the order init draws from the RNG (seeded models stay bit-identical across versions);
# the stacked entries stay together, since they live in one submodule.
PARAMS: dict[str, ParamSpec] = {
    "embed": ParamSpec(
        lambda c: (c.vocab_size, c.hidden_size), ("vocab", "embed"), normal, "model.embed_tokens.weight"
    ),
    "attn_norm": ParamSpec(
        lambda c: (c.num_layers, c.hidden_size), ("layers", None), ones, "model.layers.{}.input_layernorm.weight"
    ),
    "q_proj": ParamSpec(
        lambda c: (c.num_layers, c.hidden_size, c.num_heads, c.head_dim),
        ("layers", "embed", "heads", "head_dim"),
        normal,
        _ATTN + "q_proj.weight",
        **_proj_in(_heads),
    ),
    "k_proj": ParamSpec(
        lambda c: (c.num_layers, c.hidden_size, c.num_kv_heads, c.head_dim),
        ("layers", "embed", "kv_heads", "head_dim"),
        normal,
        _ATTN + "k_proj.weight",
        **_proj_in(_kv_heads),
    ),
    "v_proj": ParamSpec(
        lambda c: (c.num_layers, c.hidden_size, c.num_kv_heads, c.head_dim),
        ("layers", "embed", "kv_heads", "head_dim"),
        normal,
        _ATTN + "v_proj.weight",
        **_proj_in(_kv_heads),
    ),
    "q_bias": ParamSpec(
        lambda c: (c.num_layers, c.num_heads, c.head_dim),
        ("layers", "heads", "head_dim"),
        normal,
        _ATTN + "q_proj.bias",
        **_bias(_heads),
        present=_has_bias,
    ),
    "k_bias": ParamSpec(
        lambda c: (c.num_layers, c.num_kv_heads, c.head_dim),
        ("layers", "kv_heads", "head_dim"),
        normal,
        _ATTN + "k_proj.bias",
        **_bias(_kv_heads),
        present=_has_bias,
    ),
    "v_bias": ParamSpec(
        lambda c: (c.num_layers, c.num_kv_heads, c.head_dim),
        ("layers", "kv_heads", "head_dim"),
        normal,
        _ATTN + "v_proj.bias",
        **_bias(_kv_heads),
        present=_has_bias,
    ),
    "o_proj": ParamSpec(
        lambda c: (c.num_layers, c.num_heads, c.head_dim, c.hidden_size),
        ("layers", "heads", "head_dim", "embed"),
        normal,
        _ATTN + "o_proj.weight",
        # HF [D, H*hd] <-> ours [H, hd, D]
        to_ours=lambda w, c: w.reshape(c.hidden_size, c.num_heads, c.head_dim).transpose(1, 2, 0),
        to_hf=lambda w, c: w.transpose(2, 0, 1).reshape(c.hidden_size, -1),
    ),
    "mlp_norm": ParamSpec(
        lambda c: (c.num_layers, c.hidden_size),
        ("layers", None),
        ones,
        "model.layers.{}.post_attention_layernorm.weight",
    ),
    "gate_proj": ParamSpec(
        lambda c: (c.num_layers, c.hidden_size, c.intermediate_size),
        ("layers", "embed", "mlp"),
        normal,
        _MLP + "gate_proj.weight",
        _t,
        _t,
    ),
    "up_proj": ParamSpec(
        lambda c: (c.num_layers, c.hidden_size, c.intermediate_size),
        ("layers", "embed", "mlp"),
        normal,
        _MLP + "up_proj.weight",
        _t,
        _t,
    ),
    "down_proj": ParamSpec(
        lambda c: (c.num_layers, c.intermediate_size, c.hidden_size),
        ("layers", "mlp", "embed"),
        normal,
        _MLP + "down_proj.weight",
        _t,
        _t,
    ),
    "final_norm": ParamSpec(lambda c: (c.hidden_size,), (None,), ones, "model.norm.weight"),
    "lm_head": ParamSpec(
        lambda c: (c.hidden_size, c.vocab_size),
        ("embed", "vocab"),
        normal,
        "lm_head.weight",
        _t,
        _t,
        present=lambda c: not c.tie_word_embeddings,
    ),
}

# Logical axes of every parameter, by name (what sharding.ShardingRules maps onto mesh axes).
PARAM_AXES: dict[str, tuple[str | None, ...]] = {name: spec.logical_axes for name, spec in PARAMS.items()}


def params_of(cfg: ModelConfig) -> dict[str, ParamSpec]:
    """The table's entries a config has, in table order."""
    return {name: spec for name, spec in PARAMS.items() if spec.present(cfg)}


def param_name(path: tuple[Any, ...]) -> str:
    """A parameter's name (a key of PARAMS) from its pytree path in ``nnx.split(model)[1]``."""
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return [n for n in names if n not in (None, "value")][-1]


def param_axes(path: tuple[Any, ...]) -> tuple[str | None, ...]:
    """Logical axes of a parameter from its pytree path in ``nnx.split(model)[1]``."""
    return PARAMS[param_name(path)].logical_axes


def is_stacked(name: str) -> bool:
    """Whether a parameter carries the leading ``layers`` axis (one slice per decoder layer)."""
    return PARAMS[name].stacked


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """name -> shape for every parameter of a config."""
    return {name: spec.shape(cfg) for name, spec in params_of(cfg).items()}
