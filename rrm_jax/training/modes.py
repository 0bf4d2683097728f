"""One object per training mode: its objective, the data it reads, one training step, what it logs and shapes.

The loop, the trainer and ``rrm-jax plan`` ask the recipe's mode (:func:`mode_of`, the one place that reads
``mode`` and whether the reward is a judge) and never branch on which one it is:

========================  ===========================  ===================  =====================================
mode                      objective (training.obj...)  data                 a step
========================  ===========================  ===================  =====================================
``sft``                   token cross-entropy          {prompt, completion}  one update
``grpo`` (judge)          GRPO on rule rewards         {query, chosen,       rollouts of the judge, rule rewards,
                                                       rejected}             ``inner_iters`` updates
``grpo`` (policy)         GRPO on a judge's verdicts   {query}               rollouts of the policy, the judge's
                                                                             rewards, ``inner_iters`` updates
``dpo``                   sigmoid DPO                  {query, chosen,       the reference's log-probs, one update
                                                       rejected}
========================  ===========================  ===================  =====================================
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rrm_jax.core.api import bucket
from rrm_jax.training.data import (
    PairPipeline,
    QueryPipeline,
    SFTPipeline,
    sequence_limit,
    synthetic_pairs,
    synthetic_queries,
)
from rrm_jax.training.dpo import DPOPipeline, pair_slots
from rrm_jax.training.objectives import DPO, GRPO, SFT, Objective
from rrm_jax.training.rl.loss import LossConfig
from rrm_jax.training.rl.rollout import assign_sides, bucket_len, to_prompt, to_query_prompt


def loss_config(cfg) -> LossConfig:
    """GRPO's loss hyper-parameters from a recipe (the trainer's and the plan's)."""
    g = cfg.grpo
    return LossConfig(
        eps_low=g.eps_low,
        eps_high=g.eps_high,
        beta=g.beta,
        aggregation=g.aggregation,
        norm_length=g.norm_length or cfg.sampling.max_new_tokens,
        logprob_chunk=g.logprob_chunk,
    )


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


class Mode:
    """What a training mode is to the loop, the trainer and the plan; subclasses override what differs."""

    name: ClassVar[str]
    samples: ClassVar[bool] = False  # each step samples rollouts from the model being trained
    judged: ClassVar[bool] = False  # a judge model scores them (its programs and memory are planned too)
    bar: ClassVar[str] = "reward {reward:+.3f}  loss {loss:.4f}"  # the progress bar's fields

    def objective(self, cfg) -> Objective:
        raise NotImplementedError

    def updates_per_step(self, cfg) -> int:
        return 1

    def reference(self, cfg) -> bool:
        """Whether the trainer keeps its initial params as a frozen reference. Any mode's trainer may also run
        GRPO steps (the demo's phases do), so a KL term asks for one whatever the mode."""
        return cfg.grpo.beta > 0

    def logprob_passes(self, cfg) -> int:
        """Trainer-side log-prob passes over each update batch (old policy, reference)."""
        return 0

    def synthetic(self, n: int, seed: int) -> tuple[str, list[dict]]:
        """The file name and records of ``data.synthetic = n`` generated examples."""
        return "pairs.jsonl", synthetic_pairs(n, seed)

    def pipeline(self, path: Path, trainer, cfg):
        raise NotImplementedError

    def prepare(self, trainer, pairs) -> list[dict]:
        """Raw pairs -> judge prompts (prompt_ids, label) in a seeded random order of the two responses."""
        flips = assign_sides(pairs, seed=trainer.cfg.seed, step=trainer.iteration, swap=trainer.cfg.data.swap)
        return [to_prompt(p, bool(f), trainer.render, trainer.model.tokenizer) for p, f in zip(pairs, flips)]

    def step(self, trainer, batch) -> dict:
        raise NotImplementedError

    def batch_shape(self, cfg, multiple: int, forced_len: int) -> tuple[int, int]:
        """(rows, row tokens) of the update batch as the trainer pads it (rows a multiple of ``multiple``);
        ``forced_len``: the forced verdict's tokens, which a thinking budget appends."""
        return _ceil(cfg.batch_size, multiple), cfg.grpo.seq_bucket or bucket_len(sequence_limit(cfg) - 1)


class SFTMode(Mode):
    name = "sft"
    bar = "loss {loss:.4f}"

    def objective(self, cfg) -> Objective:
        return SFT(cfg.grpo.logprob_chunk)

    def pipeline(self, path, trainer, cfg):
        return SFTPipeline(path, trainer.model.tokenizer, cfg)

    def step(self, trainer, batch) -> dict:
        metrics = trainer.sft_step(*batch)
        trainer.iteration += 1
        return metrics


class JudgeGRPOMode(Mode):
    """The RRM itself: the judge samples verdicts on labelled pairs, rewarded +1 / -1 by rule."""

    name = "grpo"
    samples = True

    def objective(self, cfg) -> Objective:
        return GRPO(loss_config(cfg))

    def updates_per_step(self, cfg) -> int:
        return cfg.grpo.inner_iters

    def logprob_passes(self, cfg) -> int:
        return int(cfg.grpo.old_logprobs == "recompute") + int(cfg.grpo.beta > 0)

    def pipeline(self, path, trainer, cfg):
        return PairPipeline(path, trainer.render, trainer.model.tokenizer, cfg)

    def step(self, trainer, batch) -> dict:
        return trainer.grpo_step(batch)

    def batch_shape(self, cfg, multiple, forced_len):
        g, s = cfg.grpo, cfg.sampling
        extra = bucket(forced_len, minimum=8) if s.max_think_tokens is not None else 0
        t = g.seq_bucket or bucket_len(cfg.data.max_prompt_tokens + s.max_new_tokens + extra - 1)
        return _ceil(g.prompts_per_step * g.group_size, multiple), t


class PolicyGRPOMode(JudgeGRPOMode):
    """A policy post-trained on plain queries with a judge's verdicts as the reward."""

    judged = True

    def synthetic(self, n, seed):
        return "queries.jsonl", synthetic_queries(n, seed)

    def pipeline(self, path, trainer, cfg):
        return QueryPipeline(path, trainer.model.tokenizer, cfg)

    def prepare(self, trainer, pairs) -> list[dict]:
        return [to_query_prompt(p, trainer.model.tokenizer) for p in pairs]


class DPOMode(Mode):
    name = "dpo"

    def objective(self, cfg) -> Objective:
        return DPO(cfg.dpo, cfg.grpo.logprob_chunk)

    def reference(self, cfg) -> bool:
        return True

    def logprob_passes(self, cfg) -> int:
        return 1

    def pipeline(self, path, trainer, cfg):
        return DPOPipeline(path, trainer.model.tokenizer, cfg)

    def step(self, trainer, batch) -> dict:
        metrics = trainer.dpo_step(batch)
        trainer.iteration += 1
        return metrics

    def batch_shape(self, cfg, multiple, forced_len):
        return 2 * pair_slots(cfg.batch_size, multiple), super().batch_shape(cfg, multiple, forced_len)[1]


MODES = {m.name: m for m in (SFTMode(), JudgeGRPOMode(), DPOMode())}
POLICY_GRPO = PolicyGRPOMode()


def mode_of(cfg) -> Mode:
    """The recipe's mode: ``mode``, and for GRPO whether the reward is a judge's (TrainConfig.policy)."""
    return POLICY_GRPO if cfg.policy else MODES[cfg.mode]
