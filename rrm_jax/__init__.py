"""rrm-jax: Reward Reasoning Models in JAX/Flax NNX.

The public API. The house, bottom up (an import may only go down, see tests/test_layers.py):
``core`` (config, model, sharding, checkpoints, loaders) -> ``data`` (pair datasets) -> ``sampler`` -> ``judge``
(prompt, verdicts, Judge, tournaments) -> ``evaluation`` and ``training`` -> ``demo`` -> ``cli``, ``benchmarks``.
"""

from rrm_jax.core.errors import CheckpointError, ConfigError

# Everything that needs jax loads lazily, so `import rrm_jax` (and the `rrm-jax` command's start, which may
# re-execute itself before any work: rrm_jax.core.hugepages) stays light.
_LAZY = {
    "Model": "rrm_jax.core.api",
    "init": "rrm_jax.core.api",
    "load": "rrm_jax.core.api",
    "save_hf": "rrm_jax.core.api",
    "ModelConfig": "rrm_jax.core.config",
    "ShardingRules": "rrm_jax.core.sharding",
    "make_mesh": "rrm_jax.core.sharding",
    "generate": "rrm_jax.sampler",
    "SamplingConfig": "rrm_jax.sampler",
    "Completion": "rrm_jax.sampler",
    "Judge": "rrm_jax.judge",
    "Verdict": "rrm_jax.judge",
}
# the benchmarks' scoring rules (rrm_jax.scoring) and the judge as other RL stacks' reward function
_SUBMODULES = {"scoring": "rrm_jax.evaluation.scoring", "rewards": "rrm_jax.rewards"}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    raise AttributeError(f"module 'rrm_jax' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "CheckpointError",
    *_LAZY,
    *_SUBMODULES,
]
__version__ = "0.1.0"
