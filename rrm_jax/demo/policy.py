"""The demo's feedback loop: the trained judge post-trains a separate tiny policy that never sees a label.

1. Warm start: a fresh tiny Qwen2 imitates a careless teacher that works ``a+b`` out step by step but slips on
   the first step of most problems (``3+4=5+3=6+2=7+1=8``), so the policy answers the demo's questions and is
   often wrong.
2. Feedback cycles: GRPO on the training questions, with rewards only from the judge trained in the first stage
   (a knockout or ELO round-robin inside each group of rollouts, on the boxed answers;
   :class:`rrm_jax.training.rl.judge_rewards.JudgeReward`). The ground truth is never shown to training.
3. After every cycle: held-out accuracy, the share of sampled answers to questions the policy never trained on
   that are right, checked against the ground truth.
4. Best-of-n on the held-out questions with the warm-started policy's samples as candidates: the judge's
   knockout and ELO picks against a random pick, the majority answer and the oracle (any candidate right).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from rrm_jax.core.api import init
from rrm_jax.core.seeds import derive_seed
from rrm_jax.core.sharding import make_mesh
from rrm_jax.core.tokenizers import chat_prompt
from rrm_jax.data.answers import math_answer
from rrm_jax.demo import task
from rrm_jax.evaluation.bon import STRATEGIES as BON_STRATEGIES
from rrm_jax.evaluation.bon import BonItem, pick_chunk
from rrm_jax.evaluation.bon_report import summarize_bon
from rrm_jax.judge import Judge
from rrm_jax.judge.prompt import DEMO_PROMPT
from rrm_jax.sampler import SamplingConfig, generate
from rrm_jax.training.config import GRPOConfig, JudgeConfig, OptimConfig, TrainConfig
from rrm_jax.training.rl.judge_rewards import JudgeReward
from rrm_jax.training.trainer import Trainer


def sample_answers(policy, problems, *, n: int, temperature: float, max_new_tokens: int, seed: int) -> list[list]:
    """``n`` sampled responses per problem, as extracted boxed answers (None when there is none)."""
    tok = policy.tokenizer
    comps = generate(
        policy,
        [chat_prompt(tok, p.query) for p in problems],
        SamplingConfig(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, max_slots=256),
    )
    return [[math_answer(c.text) for c in comps[i * n : (i + 1) * n]] for i in range(len(problems))]


def accuracy(answers: list[list], problems) -> float:
    """The share of sampled answers equal to the ground truth."""
    return float(np.mean([a == str(p.answer) for cands, p in zip(answers, problems) for a in cands]))


def best_of_n(judge: Judge, answers: list[list], problems, *, n: int, seed: int) -> dict:
    """Accuracy of the pick among the first ``n`` sampled answers per problem, for each strategy, through
    ``rrm-jax bon``'s own picking (:func:`rrm_jax.evaluation.bon.pick_chunk`). The judge is shown the boxed
    answers (what it was trained to compare); a response without one is shown as "?"."""
    items = [
        BonItem(
            id=p.query,
            query=p.query,
            candidates=tuple(a if a is not None else "?" for a in c[:n]),
            correct=tuple(a == str(p.answer) for a in c[:n]),
            answers=tuple(c[:n]),
        )
        for c, p in zip(answers, problems)
    ]
    records = pick_chunk(judge, list(enumerate(items)), strategies=BON_STRATEGIES, ns=(n,), seed=seed)
    acc = summarize_bon(records, strategies=BON_STRATEGIES, ns=(n,))["accuracy"]
    return {s: acc[s][str(n)] for s in BON_STRATEGIES}


def feedback_loop(judge_model, recipe, *, seed: int, log, say, bar) -> dict:
    """Warm-start a policy, post-train it for ``recipe.cycles`` cycles on judge rewards; the policy figures."""
    t_start = time.perf_counter()
    tok = judge_model.tokenizer
    cfg = task.model_config(hidden=recipe.policy_hidden, layers=recipe.policy_layers)
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    policy = init(cfg, seed=derive_seed(seed, 0x9011C7), mesh=mesh, tokenizer=tok, dtype="float32")
    train_q, held_q = task.split_problems(seed, recipe.policy_heldout)
    rng = np.random.default_rng([seed, 0x9017])
    say(
        f"[bold]feedback loop[/bold]: a separate {cfg.num_params / 1e6:.2f}M-param policy, {len(train_q)} "
        f"unlabelled training questions, {len(held_q)} held-out questions"
    )

    # -- warm start: a careless teacher -----------------------------------------------------------------
    sft = Trainer(
        policy,
        TrainConfig(
            mode="sft",
            steps=recipe.policy_sft_steps,
            batch_size=recipe.policy_sft_batch,
            seed=seed,
            optim=OptimConfig(lr=recipe.policy_sft_lr, b2=0.99, warmup_steps=20, end_lr_ratio=1.0),
            grpo=GRPOConfig(seq_bucket=80),
        ),
    )
    for step in bar(range(recipe.policy_sft_steps), "policy warm start"):
        m = sft.sft_step(*task.policy_batch(train_q, recipe.policy_sft_batch, rng, tok, recipe.careless))
        if step % 50 == 0 or step == recipe.policy_sft_steps - 1:
            log(phase="policy_sft", step=step, loss=m["loss"], seconds=time.perf_counter() - t_start)

    sample = dict(temperature=recipe.policy_temperature, max_new_tokens=recipe.max_new_tokens)

    def held_out(model, cycle: int, n: int) -> tuple[float, list]:
        answers = sample_answers(model, held_q, n=n, seed=derive_seed(seed, cycle, 0xE7A1), **sample)
        return accuracy(answers, held_q), answers

    before, warm_answers = held_out(sft.policy, 0, max(recipe.policy_samples, recipe.bon_n))
    log(phase="policy_eval", cycle=0, accuracy=before, seconds=time.perf_counter() - t_start)
    say(
        f"policy after its warm start: held-out accuracy {before:.3f} (the teacher slips on "
        f"{recipe.careless:.0%} of first steps)"
    )

    # -- feedback cycles: GRPO on judge rewards only ----------------------------------------------------
    judge = Judge(
        judge_model,
        prompt=DEMO_PROMPT,
        sampling=SamplingConfig(
            max_new_tokens=recipe.max_new_tokens, temperature=recipe.eval_temperature, max_slots=256
        ),
    )
    kind = f"judge_{recipe.policy_reward}"
    grpo_cfg = TrainConfig(
        mode="grpo",
        steps=recipe.cycles * recipe.cycle_steps,
        seed=seed,
        optim=OptimConfig(lr=recipe.policy_lr, b2=0.99, end_lr_ratio=1.0),
        grpo=GRPOConfig(
            prompts_per_step=recipe.policy_prompts, group_size=recipe.policy_group, seq_bucket=80, reward=kind
        ),
        sampling=SamplingConfig(
            max_new_tokens=recipe.max_new_tokens,
            temperature=recipe.policy_temperature,
            max_slots=recipe.policy_prompts * recipe.policy_group,
        ),
        judge=JudgeConfig(model="demo judge (stage 1)", prompt=DEMO_PROMPT.key, show="answer", extract="math"),
    )
    reward = JudgeReward(judge, kind, show=grpo_cfg.judge.show, extract=grpo_cfg.judge.extract, seed=seed)
    grpo = Trainer(sft.policy, grpo_cfg, reward_fn=reward)
    cycles = []
    for c in range(1, recipe.cycles + 1):
        t0 = time.perf_counter()
        for step in bar(range(recipe.cycle_steps), f"feedback cycle {c}/{recipe.cycles}"):
            batch = [dict(query=train_q[i].query) for i in rng.integers(0, len(train_q), recipe.policy_prompts)]
            m = grpo.grpo_step(batch)
            log(
                phase="policy_grpo",
                cycle=c,
                step=(c - 1) * recipe.cycle_steps + step + 1,
                reward=m["reward_mean"],
                loss=m["loss"],
                judge_share=m["judge_share"],
                judge_tokens=m["judge_tokens"],
                judge_comparisons=m["judge_comparisons"],
                seconds=time.perf_counter() - t_start,
            )
        acc, _ = held_out(grpo.policy, c, recipe.policy_samples)
        cycles.append(acc)
        log(phase="policy_eval", cycle=c, accuracy=acc, seconds=time.perf_counter() - t_start)
        say(
            f"feedback cycle {c}: held-out policy accuracy {acc:.3f} ({time.perf_counter() - t0:.0f}s, judge "
            f"{m['judge_share']:.0%} of the last step)"
        )

    bon = best_of_n(judge, warm_answers, held_q, n=recipe.bon_n, seed=seed)
    log(phase="policy_bon", n=recipe.bon_n, **bon, seconds=time.perf_counter() - t_start)
    say(f"best-of-{recipe.bon_n}: " + ", ".join(f"{s} {v:.3f}" for s, v in bon.items()))
    return dict(
        policy_accuracy_before=before,
        policy_accuracy_cycles=cycles,
        policy_accuracy_after=cycles[-1],
        policy_reward=kind,
        bon_accuracy=bon,
        bon_n=recipe.bon_n,
        policy_heldout=len(held_q),
        policy_seconds=time.perf_counter() - t_start,
    )
