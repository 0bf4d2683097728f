"""The model's typed config: read from an HF ``config.json`` (transformers 4.x or 5.x) or a ``models/*.toml``.

Only the architecture lives here. Anything the decoder does not implement is refused with an error
naming the offending field, so a checkpoint never silently runs with the wrong maths.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rrm_jax.core import configs, shipped
from rrm_jax.core.errors import ConfigError

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

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    # ---------------------------------------------------------------- HF config.json
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        def need(key):
            if key not in d:
                raise ConfigError(f"{source}: required field {key!r} is missing")
            return d[key]

        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: field 'model_type'={model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: field 'hidden_act'={act!r} is not supported (only 'silu')")

        # transformers 5 moved rope settings into `rope_parameters`; 4.x has `rope_theta` + `rope_scaling`.
        rope = d.get("rope_parameters") or {}
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type") or rope.get("type")
        scaling = d.get("rope_scaling")
        if scaling:
            rope_type = scaling.get("rope_type") or scaling.get("type")
            field = "rope_scaling"
        else:
            field = "rope_parameters"
        if rope_type not in (None, "default"):
            raise ConfigError(f"{source}: field {field!r} has rope type {rope_type!r}; only default RoPE is implemented")

        num_layers = need("num_hidden_layers")
        _check_sliding_window(d, num_layers, source)

        num_heads = need("num_attention_heads")
        hidden = need("hidden_size")
        head_dim = d.get("head_dim") or hidden // num_heads
        if model_type == "qwen2":
            qkv_bias = True
        else:
            qkv_bias = False
            if d.get("attention_bias"):
                # Llama's attention_bias also puts a bias on o_proj, which this decoder does not have.
                raise ConfigError(f"{source}: field 'attention_bias'=true is not supported for model_type 'llama'")
            if d.get("mlp_bias"):
                raise ConfigError(f"{source}: field 'mlp_bias'=true is not supported")
        return cls(
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=d.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope_theta=float(theta),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
            model_type=model_type,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            name=d.get("_name_or_path", ""),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: not found (an HF checkpoint directory needs a config.json)")
        try:
            d = json.loads(path.read_text())
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
    def from_toml(cls, path: str | Path) -> "ModelConfig":
        """A ``models/*.toml`` preset (flat, or under ``[model]``); ``name`` defaults to the file's stem."""
        source, values, _ = configs.file_layer(path)
        values = values.get("model", values)
        values.setdefault("name", Path(path).stem)
        return configs.build(cls, [(source, values, False)])


def _check_sliding_window(d: dict, num_layers: int, source: str) -> None:
    """Refuse checkpoints whose layers really use sliding-window attention (both config generations)."""
    layer_types = d.get("layer_types")
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
        mwl = d.get("max_window_layers", num_layers)
        if mwl < num_layers:
            raise ConfigError(
                f"{source}: field 'use_sliding_window'=true with max_window_layers={mwl} < num_hidden_layers="
                f"{num_layers}; sliding-window attention is not implemented"
            )


MODELS_DIR = shipped.shipped_dir("models")


def resolve_config(spec: "str | Path | ModelConfig | dict | Any") -> ModelConfig:
    """Accept a ModelConfig, a TOML path, a preset name from models/, an HF config dict/object, or a config.json."""
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, dict):
        return ModelConfig.from_hf_dict(spec, source="<dict>")
    if hasattr(spec, "to_dict"):  # transformers PretrainedConfig
        return ModelConfig.from_hf_dict(spec.to_dict(), source=type(spec).__name__)
    p = Path(spec)
    if p.is_dir():
        return ModelConfig.from_json(p / "config.json")
    if p.suffix == ".json":
        return ModelConfig.from_json(p)
    found = shipped.find(spec, "models")  # an existing file, or a preset name / models/NAME.toml
    if found is not None:
        return ModelConfig.from_toml(found)
    if p.suffix == ".toml":
        return ModelConfig.from_toml(p)  # names the missing file
    raise ConfigError(f"{spec}: not a config file, checkpoint directory or preset "
                      f"(presets: {', '.join(shipped.names('models'))})")
