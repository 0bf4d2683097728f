"""rrm-jax: Reward Reasoning Models in JAX/Flax NNX."""

from .api import Model, init, load, save_hf
from .config import ConfigError, ModelConfig
from .hf_io import CheckpointError
from .sharding import ShardingRules, make_mesh

__all__ = ["Model", "init", "load", "save_hf", "ModelConfig", "ConfigError", "CheckpointError", "ShardingRules", "make_mesh"]
__version__ = "0.1.0"
