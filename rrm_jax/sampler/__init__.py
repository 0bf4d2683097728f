"""The KV-cache sampler: ``generate(model, prompts, SamplingConfig(...)) -> [Completion]``.

``config`` holds ``SamplingConfig``; ``scheduler`` is the host side (continuous batching, refills, stop strings,
completions); ``loop`` is the frozen device loop (jitted, donated prefill/decode over one ``SamplingState``);
``sampling`` holds the token samplers.
"""

from rrm_jax.sampler.config import SamplingConfig
from rrm_jax.sampler.scheduler import Completion, GenerateStats, generate

__all__ = ["Completion", "GenerateStats", "SamplingConfig", "generate"]
