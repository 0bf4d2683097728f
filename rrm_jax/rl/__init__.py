"""GRPO pieces as plain functions: advantages, losses (with chunked log-probs), rewards, rollout assembly.

Nothing here knows file formats or the training loop (see rrm_jax.train / rrm_jax.train_step).
"""

from . import advantages
from .loss import AGGREGATIONS, LossConfig, chunked_logprobs, grpo_loss, k3_kl, sft_loss, token_weights
from .rewards import verdict_reward

__all__ = ["advantages", "AGGREGATIONS", "LossConfig", "chunked_logprobs", "grpo_loss", "k3_kl", "sft_loss",
           "token_weights", "verdict_reward"]
