"""The ``rrm-jax demo`` recipe: every number the demo's results depend on (``train/demo.toml`` holds the defaults).

Loaded like every config (:mod:`rrm_jax.core.configs`): defaults, then ``--quick``, then a TOML file, then
``--set key=value``; the run writes the resolved recipe beside its outputs (``recipe.toml``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rrm_jax.core import configs, shipped
from rrm_jax.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything the demo's numbers depend on (all our choices, tuned for 2 CPU cores)."""

    # model: 2 layers, hidden 64 (~0.13M params)
    hidden: int = 64
    layers: int = 2
    # warm start (batch 80 x 40% reasoning traces: the reasoning skill needs ~16k traced examples)
    sft_fraction: float = 0.4  # share of the training pairs the teacher answers
    snap_fraction: float = 0.6  # share of warm-start traces that judge without thinking (coin-flip verdict)
    sft_steps: int = 500
    sft_batch: int = 80
    sft_lr: float = 3e-3
    # GRPO
    grpo_steps: int = 200
    prompts_per_step: int = 16
    group_size: int = 8
    grpo_lr: float = 1e-4
    temperature: float = 0.7  # rollouts
    # evaluation
    eval_temperature: float = 0.7
    eval_every: int = 20
    eval_pairs: int = 0  # 0 = all held-out pairs
    votes: int = 5
    knockout_queries: int = 30
    knockout_candidates: int = 4
    max_new_tokens: int = 64  # the longest chain (0+9) needs 55
    # the feedback loop: a separate policy post-trained on the judge's verdicts alone
    policy_hidden: int = 64
    policy_layers: int = 2
    careless: float = 0.7  # share of the warm-start teacher's answers that slip on the first step
    policy_sft_steps: int = 300
    policy_sft_batch: int = 64
    policy_sft_lr: float = 3e-3
    policy_heldout: int = 30  # questions the policy never trains on
    cycles: int = 3  # feedback cycles (held-out policy accuracy after each)
    cycle_steps: int = 20  # GRPO steps per cycle
    policy_prompts: int = 16
    policy_group: int = 8
    policy_lr: float = 3e-4
    policy_temperature: float = 1.0  # the policy's rollouts and held-out samples
    policy_reward: str = "knockout"  # knockout | elo: the tournament inside each group of rollouts
    policy_samples: int = 8  # sampled answers per held-out question
    bon_n: int = 8  # best-of-n candidates per held-out question

    def __post_init__(self):
        if self.policy_reward not in ("knockout", "elo"):
            raise ConfigError(f"Recipe.policy_reward={self.policy_reward!r}: must be knockout or elo")


# CI's run: a judge of 30 GRPO steps, and a fourth feedback cycle (~14 s) for the policy it trains
QUICK = dict(sft_steps=500, grpo_steps=30, eval_every=15, votes=3, knockout_queries=4, eval_pairs=48, cycles=4)


def load_recipe(path: str | Path | None = None, overrides: list[str] = (), *, quick: bool = False) -> Recipe:
    """Recipe defaults, then ``--quick``, then a TOML file (``demo`` names the shipped train/demo.toml), then
    ``key=value`` overrides; unknown or mistyped fields raise a ConfigError naming the file (or flag) and field."""
    if path is not None:
        path = shipped.find(path, "train") or path
    return configs.load(Recipe, path, overrides, defaults=Recipe(**QUICK) if quick else None, flag="--set")
