"""GRPO pieces as plain functions: advantages, losses (with chunked log-probs), rewards, rollout assembly.

Nothing here knows file formats or the training loop (see rrm_jax.training / rrm_jax.training.step).
"""

from rrm_jax.training.rl import advantages
from rrm_jax.training.rl.loss import (
    AGGREGATIONS,
    LossConfig,
    chunked_logprobs,
    grpo_loss,
    k3_kl,
    sft_loss,
    token_weights,
)
from rrm_jax.training.rl.rewards import verdict_reward

__all__ = [
    "advantages",
    "AGGREGATIONS",
    "LossConfig",
    "chunked_logprobs",
    "grpo_loss",
    "k3_kl",
    "sft_loss",
    "token_weights",
    "verdict_reward",
]
