"""Training: GRPO (and SFT) for reward reasoning models, as a library (:class:`Trainer`) and a CLI.

Programmatic use (what ``rrm-jax demo`` does)::

    import jax.numpy as jnp, rrm_jax
    from rrm_jax.training import Trainer
    from rrm_jax.training.config import TrainConfig, OptimConfig, GRPOConfig

    model = rrm_jax.init("tiny", compute_dtype=jnp.bfloat16, tokenizer=tok)     # fp32 master, bf16 compute
    cfg = TrainConfig(steps=50, optim=OptimConfig(lr=1e-3), sampling=rrm_jax.SamplingConfig(max_new_tokens=48),
                      grpo=GRPOConfig(prompts_per_step=8, group_size=8, seq_bucket=256))
    tr = Trainer(model, cfg, render=lambda q, a, b: my_prompt(q, a, b))       # reward: verdict vs label
    tr.sft_step(prompt_ids, completion_ids)     # token cross-entropy on completions -> metrics dict
    tr.grpo_step(pairs)                         # pairs: [{query, chosen, rejected}] -> rollout + mu updates
    tr.dpo_step(pairs)                          # mode "dpo": one DPO update against the initial params
    judge_model = tr.policy                     # Model sharing the live params (no host copy)

Shapes are bucketed (rows fixed per step kind, lengths to ``seq_bucket`` or a power of two), so a tiny
model compiles each step once. ``rrm-jax train train/<recipe>.toml key=value ...`` runs :func:`train`:
a grain pipeline over pairs, rollouts, updates, metrics.jsonl, orbax checkpoints with exact resume, and
an HF export of the final policy.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from rrm_jax.core.distributed import to_host
from rrm_jax.data.answers import EXTRACTORS, same_answer
from rrm_jax.judge.prompt import make_render
from rrm_jax.sampler.inputs import forced_ids
from rrm_jax.training.config import TrainConfig
from rrm_jax.training.dpo import pack_pairs, pair_slots, tokenize_pair
from rrm_jax.training.modes import loss_config, mode_of
from rrm_jax.training.objectives import DPO, GRPO, SFT, Objective
from rrm_jax.training.rl import rewards as rewards_lib
from rrm_jax.training.rl.judge_rewards import after_think
from rrm_jax.training.rl.rollout import pack, rollout
from rrm_jax.training.step import (
    TrainState,
    cached,
    init_state,
    make_logprob_fn,
    make_optimizer,
    make_train_step,
    place_batch,
)


class Trainer:
    """Holds the train state and the compiled steps for one model; see the module docstring."""

    def __init__(
        self,
        model,
        config: TrainConfig = TrainConfig(),
        reward_fn: Callable | str | None = None,
        *,
        render: Callable[[str, str, str], str] | None = None,
        generate_fn: Callable | None = None,
        total_updates: int | None = None,
    ):
        self.model, self.cfg, self.mode = model, config, mode_of(config)
        g = config.grpo
        self.loss_cfg = loss_config(config)
        self.total_updates = total_updates or config.steps * self.mode.updates_per_step(config)
        self.tx, self.schedule = make_optimizer(config.optim, self.total_updates)
        self.state: TrainState = init_state(model, self.tx, config.seed)
        # The frozen reference is the model's own (undonated) params, stored in the compute dtype (the forward
        # casts to it anyway, so log-probs are unchanged and a bf16 run keeps half the bytes); beta = 0: none.
        self.ref_params = self.compute_copy(model.state) if self.mode.reference(config) else None
        if reward_fn is None and self.mode.judged:
            raise ValueError(
                f"grpo.reward = {g.reward!r} needs the judge: pass reward_fn=JudgeReward(...) "
                "(rrm_jax.training.rl.judge_rewards; `rrm-jax train` builds it from [judge])"
            )
        extract = EXTRACTORS.get(config.judge.extract)
        self.answer_of = (
            (lambda text, answer: same_answer(config.judge.extract, extract(after_think(text)), answer))
            if extract
            else None
        )
        self.reward_fn = rewards_lib.get(reward_fn or g.reward)
        terms = []
        if g.overlong_buffer:
            cap, buffer = config.sampling.max_new_tokens, g.overlong_buffer

            def overlong(prompts, comps, batch):
                return rewards_lib.overlong_penalty([c.num_tokens for c in comps], cap, buffer)

            terms.append((g.overlong_factor, overlong))
        if g.rule_weight:

            def rule(prompts, comps, batch):
                right = [self.answer_of(c.text, ref) for c, ref in zip(comps, batch["reference"])]
                return np.where(right, 1.0, -1.0)

            terms.append((g.rule_weight, rule))
        if terms:
            self.reward_fn = rewards_lib.with_terms(self.reward_fn, terms)
        self._render = render
        self.generate_fn = generate_fn
        self.iteration = 0  # rollout batches done (seeds the position swaps and the sampler)
        mult = config.optim.micro_batches * model.batch_multiple()
        self.rows = -(-g.prompts_per_step * g.group_size // mult) * mult
        self.sft_rows = -(-config.batch_size // mult) * mult
        self._steps: dict[str, Callable] = {}
        self._logprob = None
        self._forced_len = None

    # -- pieces -----------------------------------------------------------------------------------
    @property
    def policy(self):
        """The model with the trainer's current params (same device arrays: valid until the next update)."""
        return self.model.with_state(self.state.params)

    def compute_copy(self, params):
        """``params`` cast on device to the compute dtype (the same arrays when they already are)."""
        cdt = self.model.module.compute_dtype
        if all(x.dtype == cdt for x in jax.tree_util.tree_leaves(params)):
            return params
        sh = self.model.state_shardings
        build = lambda: jax.jit(lambda p: jax.tree_util.tree_map(lambda x: x.astype(cdt), p), out_shardings=sh)
        return cached("cast", self.model, (str(cdt),), build)(params)

    def sampling_policy(self):
        """The policy for rollouts: decoding is memory-bound, so fp32 master weights are cast once per rollout
        to the compute dtype (on device, no host copy) instead of on every decode step."""
        return self.model.with_state(self.compute_copy(self.state.params))

    @property
    def render(self):
        if self._render is None:
            self._render = make_render(self.model.tokenizer, self.cfg.data.prompt)
        return self._render

    def step_fn(self, objective: Objective):
        if objective not in self._steps:
            self._steps[objective] = make_train_step(
                self.model, self.cfg.optim, self.total_updates, objective, micro_batches=self.cfg.optim.micro_batches
            )
        return self._steps[objective]

    def sampling(self):
        """The recipe's [sampling] for this rollout batch: G samples per prompt, a seed per batch."""
        seed = (self.cfg.seed * 1_000_003 + self.iteration) % (2**31)
        return dataclasses.replace(self.cfg.sampling, n=self.cfg.grpo.group_size, seed=seed)

    def update(self, batch: dict[str, np.ndarray], objective: Objective) -> dict[str, float]:
        """One optimizer step on a packed host batch; returns host metrics."""
        fn = self.step_fn(objective)
        self.state, metrics = fn(self.state, place_batch(self.model, batch, objective.keys))
        return {k: float(v) for k, v in to_host(metrics).items()}

    # -- SFT --------------------------------------------------------------------------------------
    def sft_step(self, prompt_ids_or_batch, completion_ids: Sequence[Sequence[int]] | None = None) -> dict:
        """Token cross-entropy on the completions given their prompts (or on a packed batch dict)."""
        if completion_ids is None:
            batch = prompt_ids_or_batch
        else:
            batch = pack(
                prompt_ids_or_batch,
                completion_ids,
                rows=max(
                    self.sft_rows,
                    _ceil(len(completion_ids), self.model.batch_multiple() * self.cfg.optim.micro_batches),
                ),
                seq_bucket=self.cfg.grpo.seq_bucket,
            )
        return self.update(batch, SFT(self.loss_cfg.logprob_chunk))

    # -- DPO --------------------------------------------------------------------------------------
    def dpo_step(self, pairs: Sequence[dict]) -> dict:
        """One DPO update on ``pairs`` ({query, chosen, rejected}, or already tokenised by training.dpo): the
        frozen reference's log-probs are computed once for the batch, then the policy's step."""
        if self.ref_params is None:  # a Trainer built for another mode: its initial params are the reference
            self.ref_params = self.compute_copy(self.model.state)
        items = [p if "prompt_ids" in p else tokenize_pair(p, self.model.tokenizer) for p in pairs]
        slots = pair_slots(
            max(len(items), self.cfg.batch_size), self.cfg.optim.micro_batches * self.model.batch_multiple()
        )
        batch = pack_pairs(items, slots=slots, seq_bucket=self.cfg.grpo.seq_bucket)
        t0 = time.perf_counter()
        batch["ref_logp"] = to_host(self.logprobs(self.ref_params, batch))
        t1 = time.perf_counter()
        metrics = self.update(batch, DPO(self.cfg.dpo, self.loss_cfg.logprob_chunk))
        metrics.update(pairs=float(len(items)), time_logprob=t1 - t0, time_update=time.perf_counter() - t1)
        return metrics

    # -- GRPO -------------------------------------------------------------------------------------
    def prepare(self, pairs: Sequence[dict]) -> list[dict]:
        """Raw examples -> prompts as the mode reads them (training.modes): judge prompts of pairs in a seeded
        random order, or a policy run's chat prompts of queries. Examples that already carry prompt_ids pass."""
        if all("prompt_ids" in p for p in pairs):
            return list(pairs)
        return self.mode.prepare(self, pairs)

    def logprobs(self, params, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self._logprob is None:
            self._logprob = make_logprob_fn(self.model, self.loss_cfg.logprob_chunk, self.cfg.optim.micro_batches)
        arrays = place_batch(self.model, batch, ("tokens", "positions", "mask", "targets"))
        return self._logprob(params, arrays["tokens"], arrays["positions"], arrays["mask"], arrays["targets"])

    def forced_len(self) -> int:
        if self._forced_len is None:
            tok, sampling = self.model.tokenizer, self.sampling()
            self._forced_len = (
                len(forced_ids(tok, sampling)) if tok or not isinstance(sampling.forced_suffix, str) else 0
            )
        return self._forced_len

    def grpo_step(self, pairs: Sequence[dict]) -> dict:
        """One rollout batch: sample G per pair, reward, advantages, then ``inner_iters`` updates."""
        g = self.cfg.grpo
        examples = self.prepare(pairs)
        t0 = time.perf_counter()
        ro = rollout(
            self.sampling_policy(),
            examples,
            group_size=g.group_size,
            sampling=self.sampling(),
            reward_fn=self.reward_fn,
            advantage=g.advantage,
            adv_eps=g.adv_eps,
            rows=max(
                self.rows,
                _ceil(len(examples) * g.group_size, self.model.batch_multiple() * self.cfg.optim.micro_batches),
            ),
            seq_bucket=g.seq_bucket,
            forced_len=self.forced_len(),
            generate_fn=self.generate_fn,
            step=self.iteration,
            answer_of=self.answer_of,
        )
        t1 = time.perf_counter()
        batch = ro.batch
        if g.old_logprobs == "recompute":
            batch["old_logp"] = to_host(self.logprobs(self.state.params, batch))
        if g.beta > 0:
            batch["ref_logp"] = to_host(self.logprobs(self.ref_params, batch))
        t2 = time.perf_counter()
        per_iter = [self.update(batch, GRPO(self.loss_cfg)) for _ in range(g.inner_iters)]
        t3 = time.perf_counter()
        self.iteration += 1
        metrics = dict(per_iter[-1])
        metrics["skipped"] = float(sum(m["skipped"] for m in per_iter))
        # before any update the trainer's log-probs should equal the old ones: this measures sampler/trainer drift
        metrics["old_policy_kl"] = per_iter[0]["approx_kl_old"]
        metrics.update(ro.stats)
        metrics.update(time_rollout=t1 - t0, time_logprob=t2 - t1, time_update=t3 - t2)
        if "judge_seconds" in metrics:
            metrics["judge_share"] = metrics["judge_seconds"] / max(t3 - t0, 1e-9)
        return metrics


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m
