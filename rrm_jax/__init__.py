"""rrm-jax: Reward Reasoning Models in JAX/Flax NNX."""

from .api import Model, init, load, save_hf
from .config import ConfigError, ModelConfig
from .hf_io import CheckpointError
from .sharding import ShardingRules, make_mesh

# The sampler and judge load lazily so `import rrm_jax` stays light.
_LAZY = {
    "generate": "rrm_jax.sampler",
    "SamplingConfig": "rrm_jax.sampler",
    "Completion": "rrm_jax.sampler",
    "Judge": "rrm_jax.judge",
    "Verdict": "rrm_jax.judge",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rrm_jax' has no attribute {name!r}")


__all__ = [
    "Model", "init", "load", "save_hf", "ModelConfig", "ConfigError", "CheckpointError", "ShardingRules", "make_mesh",
    *_LAZY,
]
__version__ = "0.1.0"
