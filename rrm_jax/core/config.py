"""The model's typed config: read from an HF ``config.json`` (transformers 4.x or 5.x) or a ``models/*.toml``.

Only the architecture lives here. Anything the decoder does not implement is refused with an error
naming the offending field, so a checkpoint never silently runs with the wrong maths.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from rrm_jax.core import configs, shipped
from rrm_jax.core.errors import ConfigError
from rrm_jax.core.specs import model_spec

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = True
    max_position_embeddings: int = 32768
    model_type: str = "qwen2"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    name: str = ""

    def __post_init__(self):
        for f in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            if not getattr(self, f) > 0:
                raise ConfigError(f"{f}={getattr(self, f)} must be positive")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}"
            )
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"model_type={self.model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})")
        # Each family has exactly one bias layout in transformers; any other combination could not be
        # exported (transformers would silently re-initialise or drop the biases).
        if self.qkv_bias != (self.model_type == "qwen2"):
            raise ConfigError(
                f"qkv_bias={self.qkv_bias} does not fit model_type={self.model_type!r} "
                "(qwen2 always has q/k/v biases; llama has none here)"
            )

    @property
    def num_params(self) -> int:
        d, f, h, k, hd = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * h * hd * 2 + d * k * hd * 2 + (h * hd + 2 * k * hd if self.qkv_bias else 0)
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.num_layers * layer + self.vocab_size * d + head + d

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    # ---------------------------------------------------------------- HF config.json
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object of config fields, got a {type(d).__name__}")

        def get(key, tp, default=None):
            """Field ``key`` as type ``tp`` (strict: "64" is not an int, true is not an int, 4 is a fine float)."""
            if key not in d:
                return default
            return configs.convert(tp, d[key], f"{source}: field {key!r}")

        def need(key, tp=int):
            if key not in d:
                raise ConfigError(f"{source}: required field {key!r} is missing")
            return get(key, tp)

        def table(key) -> dict:
            value = d.get(key)
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{source}: field {key!r}: expected an object, got {value!r}")
            return value or {}

        model_type = d.get("model_type")
        if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: field 'model_type'={model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: field 'hidden_act'={act!r} is not supported (only 'silu')")

        # transformers 5 moved rope settings into `rope_parameters`; 4.x has `rope_theta` + `rope_scaling`.
        rope = table("rope_parameters")
        if "rope_theta" in rope:
            theta = configs.convert(float, rope["rope_theta"], f"{source}: field 'rope_parameters.rope_theta'")
        else:
            theta = get("rope_theta", float, 10000.0)
        rope_type = rope.get("rope_type") or rope.get("type")
        scaling = table("rope_scaling")
        if scaling:
            rope_type = scaling.get("rope_type") or scaling.get("type")
            field = "rope_scaling"
        else:
            field = "rope_parameters"
        if rope_type not in (None, "default"):
            raise ConfigError(
                f"{source}: field {field!r} has rope type {rope_type!r}; only default RoPE is implemented"
            )

        num_layers = need("num_hidden_layers")
        _check_sliding_window(d, num_layers, source)

        num_heads = need("num_attention_heads")
        hidden = need("hidden_size")
        sizes = {"num_hidden_layers": num_layers, "num_attention_heads": num_heads, "hidden_size": hidden}
        head_dim = get("head_dim", int | None) or hidden // max(num_heads, 1)
        if model_type == "qwen2":
            qkv_bias = True
        else:
            qkv_bias = False
            if d.get("attention_bias"):
                # Llama's attention_bias also puts a bias on o_proj, which this decoder does not have.
                raise ConfigError(f"{source}: field 'attention_bias'=true is not supported for model_type 'llama'")
            if d.get("mlp_bias"):
                raise ConfigError(f"{source}: field 'mlp_bias'=true is not supported")
        sizes |= {
            "vocab_size": need("vocab_size"),
            "intermediate_size": need("intermediate_size"),
            "num_key_value_heads": get("num_key_value_heads", int | None) or num_heads,
            "head_dim": head_dim,
            "max_position_embeddings": get("max_position_embeddings", int, 32768),
        }
        for key, value in sizes.items():
            if value <= 0:
                raise ConfigError(f"{source}: field {key!r}={value} must be positive")
        eps = get("rms_norm_eps", float, 1e-6)
        if not (theta > 0 and math.isfinite(theta)):
            raise ConfigError(f"{source}: field 'rope_theta'={theta} must be a positive number")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ConfigError(f"{source}: field 'rms_norm_eps'={eps} must be a non-negative number")
        try:
            return cls(
                vocab_size=sizes["vocab_size"],
                hidden_size=hidden,
                intermediate_size=sizes["intermediate_size"],
                num_layers=num_layers,
                num_heads=num_heads,
                num_kv_heads=sizes["num_key_value_heads"],
                head_dim=head_dim,
                rope_theta=theta,
                rms_norm_eps=eps,
                tie_word_embeddings=get("tie_word_embeddings", bool, False),
                qkv_bias=qkv_bias,
                max_position_embeddings=sizes["max_position_embeddings"],
                model_type=model_type,
                bos_token_id=get("bos_token_id", int | None),
                eos_token_id=_token_ids(d.get("eos_token_id"), f"{source}: field 'eos_token_id'"),
                name=get("_name_or_path", str | None) or "",
            )
        except ConfigError as e:  # the cross-field checks of __post_init__, named by file
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: not found (an HF checkpoint directory needs a config.json)")
        raw = path.read_bytes()
        try:
            d = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 1]!r})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        return cls.from_hf_dict(d, source=str(path))

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        d = {
            "architectures": ["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "use_sliding_window": False,
            "torch_dtype": dtype,
            "attention_dropout": 0.0,
            "use_cache": True,
        }
        if self.model_type == "llama":
            d["attention_bias"] = False
            d["mlp_bias"] = False
        if self.bos_token_id is not None:
            d["bos_token_id"] = self.bos_token_id
        if self.eos_token_id is not None:
            d["eos_token_id"] = self.eos_token_id
        return d

    # ---------------------------------------------------------------- models/*.toml
    @classmethod
    def from_toml(cls, path: str | Path) -> ModelConfig:
        """A ``models/*.toml`` preset (flat, or under ``[model]``); ``name`` defaults to the file's stem."""
        try:
            source, values, _ = configs.file_layer(path)
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a TOML file (not UTF-8 text at byte {e.start})") from None
        values = values.get("model", values)
        values.setdefault("name", Path(path).stem)
        return configs.build(cls, [(source, values, False)])


def _token_ids(value, where: str) -> int | list[int] | None:
    """An id, a list of ids or null (configs.convert would also read the string "1,2" as a list)."""
    if isinstance(value, list):
        return [configs.convert(int, v, where) for v in value]
    return configs.convert(int | None, value, where)


def _check_sliding_window(d: dict, num_layers: int, source: str) -> None:
    """Refuse checkpoints whose layers really use sliding-window attention (both config generations)."""
    layer_types = d.get("layer_types")
    if layer_types is not None and not (isinstance(layer_types, list) and all(isinstance(t, str) for t in layer_types)):
        raise ConfigError(f"{source}: field 'layer_types': expected a list of strings, got {layer_types!r}")
    if layer_types:
        bad = [i for i, t in enumerate(layer_types) if t != "full_attention"]
        if bad:
            raise ConfigError(
                f"{source}: field 'layer_types' marks layers {bad[:8]} as {layer_types[bad[0]]!r}; "
                "sliding-window attention is not implemented"
            )
        return
    if d.get("use_sliding_window"):
        # transformers 4.x: layers >= max_window_layers use the window.
        mwl = configs.convert(int | None, d.get("max_window_layers"), f"{source}: field 'max_window_layers'")
        mwl = num_layers if mwl is None else mwl
        if mwl < num_layers:
            raise ConfigError(
                f"{source}: field 'use_sliding_window'=true with max_window_layers={mwl} < num_hidden_layers="
                f"{num_layers}; sliding-window attention is not implemented"
            )


MODELS_DIR = shipped.shipped_dir("models")


def resolve_config(spec: str | Path | ModelConfig | dict | Any) -> ModelConfig:
    """Accept a ModelConfig, a TOML path, a preset name from models/, an HF config dict/object, or a config.json."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        return ModelConfig.from_hf_dict(spec, source="<dict>")
    if hasattr(spec, "to_dict"):  # transformers PretrainedConfig
        return ModelConfig.from_hf_dict(spec.to_dict(), source=type(spec).__name__)
    s = model_spec(spec)
    if s.kind == "checkpoint":
        return ModelConfig.from_json(Path(s.where) / "config.json")
    if s.kind == "config":
        return ModelConfig.from_json(s.where) if s.where.endswith(".json") else ModelConfig.from_toml(s.where)
    raise ConfigError(f"{spec}: a hub id; its config comes with the checkpoint (load it, or name a preset)")
