"""``rrm-jax demo``: train a tiny reward reasoning model on CPU in a few minutes, with no downloads.

1. Build a tiny Qwen2-architecture model and its own character-level tokenizer (rrm_jax.demo.task).
2. Warm start: a short SFT on a minority of the training pairs, imitating a careless teacher that writes
   the reasoning trace on only 40% of its answers and otherwise judges at once with a coin-flip verdict ->
   a judge that thinks about half the time (and is right ~90% of the time when it does).
3. GRPO with only the outcome reward (+1 when the parsed ``\\boxed{Assistant N}`` picks the right
   answer, -1 otherwise) through :class:`rrm_jax.training.Trainer` and the real sampler. Nothing rewards the
   reasoning itself; the policy learns that thinking first pays (the share of samples that reason is
   reported) and sharpens the reasoning on pairs it never saw a trace for.
4. Evaluate on held-out pairs through :class:`rrm_jax.judge.Judge`: single votes, majority voting, and a
   knockout best-of-N over several candidate answers (rrm_jax.judge.tournament).

Everything goes to ``--out`` (default ``runs/demo``): ``recipe.toml`` (the resolved recipe), ``metrics.jsonl``
(written as it runs), ``summary.json``, ``demo.png``, the trained judge (``judge/``, an HF checkpoint with its
tokenizer) and the held-out pairs it was evaluated on (``heldout.jsonl``, `rrm-jax judge`'s format). The recipe itself lives in :mod:`rrm_jax.demo.recipe`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from rrm_jax.core.api import init, load, save_hf
from rrm_jax.core.configs import dump_toml
from rrm_jax.core.errors import ConfigError
from rrm_jax.core.progress import Progress
from rrm_jax.core.sharding import make_mesh
from rrm_jax.core.tokenizers import char_tokenizer
from rrm_jax.demo import task
from rrm_jax.demo.policy import feedback_loop
from rrm_jax.demo.recipe import Recipe, load_recipe
from rrm_jax.judge import Judge
from rrm_jax.judge.prompt import DEMO_PROMPT, make_render
from rrm_jax.sampler import SamplingConfig
from rrm_jax.training.config import GRPOConfig, OptimConfig, TrainConfig
from rrm_jax.training.trainer import Trainer


def _parse(argv):
    ap = argparse.ArgumentParser(prog="rrm-jax demo", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", default="runs/demo", help="run directory (recipe.toml, metrics.jsonl, summary.json, demo.png)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a shortened run (CI)")
    ap.add_argument("--recipe", default=None, help="a TOML of Recipe fields (train/demo.toml holds the defaults)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override Recipe fields")
    ap.add_argument(
        "--stage",
        choices=("all", "judge", "policy"),
        default="all",
        help="judge: train and evaluate the judge (saved to OUT/judge); policy: the feedback loop with "
        "the judge OUT/judge holds; all: both",
    )
    ap.add_argument("--no-plot", action="store_true")
    return ap.parse_args(argv)


class _Log:
    """metrics.jsonl, appended and flushed per record so a killed run keeps what it measured."""

    def __init__(self, path: Path, mode: str = "w"):
        self.path = path
        self.f = open(path, mode)

    def __call__(self, **rec):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(judge, pairs: list[task.Pair], *, votes: int, seed: int) -> dict:
    """Held-out judge accuracy: the mean single-vote accuracy over all samples, and majority voting."""
    verdicts = judge.compare_many([(p.query, p.chosen, p.rejected) for p in pairs], votes=votes, seed=seed)
    single = np.array([1.0 if s == 0 else 0.0 if s == 1 else 0.5 for v in verdicts for s in v.sample_verdicts])
    thinks = np.array([not t.lstrip().startswith("</think>") for v in verdicts for t in v.reasonings])
    return dict(
        single=float(single.mean()),
        voting=float(np.mean([v.score() for v in verdicts])),
        invalid=float(np.mean([v.invalid / max(v.samples_drawn, 1) for v in verdicts])),
        thinking=float(thinks.mean()),  # share of samples that reason before the verdict
        single_when_thinking=float(single[thinks].mean()) if thinks.any() else None,
    )


def knockout_hit_rate(judge, problems: list[task.ArithmeticProblem], *, n: int, votes: int, seed: int) -> float:
    """Best-of-n by a knockout tournament: how often the champion is the right answer (chance = 1/n)."""
    rng = np.random.default_rng([seed, 0xB0])
    hits = 0
    for i, p in enumerate(problems):
        cands = task.knockout_candidates(p, n, rng)
        best, _ = judge.best_of_n(p.query, cands, strategy="knockout", votes=votes, seed=seed + i)
        hits += cands[best] == str(p.answer)
    return hits / max(len(problems), 1)


# ------------------------------------------------------------------------------------------ the run
def _bar(console, steps, label: str):
    """Iterate ``steps`` under a progress display on the demo's own output (plain lines when it is a file)."""
    with Progress(label, len(steps), console=console, stream=sys.stdout) as bar:
        for step in steps:
            yield step
            bar.update(advance=1)


def run(recipe: Recipe, out: Path, seed: int = 0, *, plot: bool = True, console=None, stage: str = "all") -> dict:
    """The demo's stages: ``judge`` (train and evaluate the judge, saved to ``out/judge``), ``policy`` (the
    feedback loop with the judge ``out/judge`` holds) or ``all``; summary.json gathers both stages' figures."""
    say = console.print if console is not None else print
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out / "metrics.jsonl", "a" if stage == "policy" else "w")
    # the seed is a flag, not a recipe field: the header line is the command that reruns this run
    (out / "recipe.toml").write_text(
        f"# rrm-jax demo --recipe {out / 'recipe.toml'} --seed {seed}\n{dump_toml(recipe)}"
    )
    if stage == "policy":
        judge, summary = _saved_judge(out, seed)
    else:
        judge, summary = train_judge(recipe, seed, log=log, say=say, console=console, t_start=t_start)
        save_hf(judge, out / "judge")
        write_pairs(out / "heldout.jsonl", held_out(recipe, seed))
    if stage != "judge":
        summary.update(
            feedback_loop(
                judge, recipe, seed=seed, log=log, say=say, bar=lambda steps, label: _bar(console, steps, label)
            )
        )
    summary["seconds"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if plot:
        summary["plot"] = str(plot_run(summary, read_log(out / "metrics.jsonl"), out / "demo.png"))
    return summary


def _saved_judge(out: Path, seed: int):
    """The judge a ``--stage judge`` run left in ``out`` (its weights, and its figures from summary.json)."""
    if not (out / "judge" / "config.json").exists() or not (out / "summary.json").exists():
        raise ConfigError(
            f"{out}: no trained judge here (judge/ and summary.json); run `rrm-jax demo --stage judge "
            f"--out {out} --seed {seed}` first"
        )
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    judge = load(out / "judge", mesh=mesh, dtype=jax.numpy.float32)  # with the tokenizer saved beside it
    summary = json.loads((out / "summary.json").read_text())
    return judge, {k: v for k, v in summary.items() if not k.startswith(("policy_", "bon_"))}


def held_out(recipe: Recipe, seed: int) -> list[task.Pair]:
    """The held-out pairs the judge is evaluated on (never trained on)."""
    held = task.split_pairs(seed)[1]
    return held[: recipe.eval_pairs] if recipe.eval_pairs else held


def write_pairs(path: Path, pairs: list[task.Pair]) -> None:
    """``pairs`` as `rrm-jax judge`'s JSONL (the right sum is response_a, label 0), so the saved judge can be
    checked from any process: ``rrm-jax judge --model OUT/judge --prompt demo --pairs OUT/heldout.jsonl``."""
    rows = [
        dict(id=f"heldout-{i}", query=p.query, response_a=p.chosen, response_b=p.rejected, label=0)
        for i, p in enumerate(pairs)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_judge(recipe: Recipe, seed: int, *, log, say, console, t_start: float):
    """SFT warm start, GRPO on the outcome reward, held-out evaluation: (the trained judge, its figures)."""
    tok = char_tokenizer()
    cfg = task.model_config(hidden=recipe.hidden, layers=recipe.layers)
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = init(cfg, seed=seed, mesh=mesh, tokenizer=tok, dtype="float32")  # its float32 recipe on any device
    train_pairs, held = task.split_pairs(seed)[0], held_out(recipe, seed)
    rng = np.random.default_rng([seed, 0xDE70])
    ko_problems = [task.all_problems()[i] for i in rng.permutation(len(task.all_problems()))[: recipe.knockout_queries]]
    say(
        f"[bold]rrm-jax demo[/bold]: {cfg.num_params / 1e6:.2f}M-param Qwen2, vocab {len(tok)}, "
        f"{len(train_pairs)} training pairs, {len(held)} held-out pairs, seed {seed}"
    )

    sampling = SamplingConfig(max_new_tokens=recipe.max_new_tokens, temperature=recipe.eval_temperature, max_slots=256)

    def judge_of(m):
        return Judge(m, prompt=DEMO_PROMPT, sampling=sampling)

    # -- 1. warm start: SFT on a weak teacher's traces for a minority of the pairs -------------------
    n_sft = max(1, int(len(train_pairs) * recipe.sft_fraction))
    sft_pairs = train_pairs[:n_sft]
    sft_cfg = TrainConfig(
        mode="sft",
        steps=recipe.sft_steps,
        batch_size=recipe.sft_batch,
        seed=seed,
        optim=OptimConfig(lr=recipe.sft_lr, b2=0.99, warmup_steps=20, end_lr_ratio=1.0),
        grpo=GRPOConfig(seq_bucket=80),
    )
    sft = Trainer(model, sft_cfg)
    render = make_render(tok, DEMO_PROMPT)
    t0 = time.perf_counter()
    for step in _bar(console, range(recipe.sft_steps), "SFT warm start"):
        prompts, comps = task.sft_batch(sft_pairs, recipe.sft_batch, rng, tok, render, recipe.snap_fraction)
        m = sft.sft_step(prompts, comps)
        if step % 50 == 0 or step == recipe.sft_steps - 1:
            log(phase="sft", step=step, loss=m["loss"], seconds=time.perf_counter() - t_start)
    say(
        f"SFT: {recipe.sft_steps} steps on {n_sft} pairs ({recipe.snap_fraction:.0%} snap judgments), "
        f"loss {m['loss']:.3f}, {time.perf_counter() - t0:.0f}s"
    )
    warm = sft.policy

    # -- 2. held-out accuracy before GRPO ------------------------------------------------------------
    before = evaluate(judge_of(warm), held, votes=recipe.votes, seed=seed)
    log(phase="eval", step=0, **before, seconds=time.perf_counter() - t_start)
    say(
        f"before GRPO: single-vote accuracy {before['single']:.3f}, {recipe.votes}-vote majority {before['voting']:.3f}, "
        f"thinks on {before['thinking']:.0%} of samples"
    )
    ko_before = knockout_hit_rate(judge_of(warm), ko_problems, n=recipe.knockout_candidates, votes=1, seed=seed)

    # -- 3. GRPO with the outcome reward only ---------------------------------------------------------
    grpo_cfg = TrainConfig(
        mode="grpo",
        steps=recipe.grpo_steps,
        seed=seed,
        optim=OptimConfig(lr=recipe.grpo_lr, b2=0.99, end_lr_ratio=1.0),  # constant lr
        grpo=GRPOConfig(prompts_per_step=recipe.prompts_per_step, group_size=recipe.group_size, seq_bucket=80),
        sampling=SamplingConfig(
            max_new_tokens=recipe.max_new_tokens,
            temperature=recipe.temperature,
            max_slots=recipe.prompts_per_step * recipe.group_size,
        ),
    )
    grpo = Trainer(warm, grpo_cfg, render=render)
    curve = [dict(step=0, **before)]
    rewards = []
    t0 = time.perf_counter()
    for step in _bar(console, range(1, recipe.grpo_steps + 1), "GRPO"):
        batch = [train_pairs[i] for i in rng.integers(0, len(train_pairs), recipe.prompts_per_step)]
        m = grpo.grpo_step([dict(query=p.query, chosen=p.chosen, rejected=p.rejected) for p in batch])
        rewards.append(m["reward_mean"])
        log(
            phase="grpo",
            step=step,
            reward=m["reward_mean"],
            accuracy=m.get("accuracy"),
            loss=m["loss"],
            entropy=m.get("entropy"),
            response_len=m["response_len"],
            seconds=time.perf_counter() - t_start,
        )
        if step % recipe.eval_every == 0 or step == recipe.grpo_steps:
            acc = evaluate(judge_of(grpo.policy), held, votes=recipe.votes, seed=seed)
            curve.append(dict(step=step, **acc))
            log(phase="eval", step=step, **acc, seconds=time.perf_counter() - t_start)
            say(
                f"GRPO step {step:4d}: reward {np.mean(rewards[-recipe.eval_every :]):+.3f}, held-out single "
                f"{acc['single']:.3f}, voting {acc['voting']:.3f}, thinks {acc['thinking']:.0%} "
                f"({time.perf_counter() - t0:.0f}s)"
            )
    after = curve[-1]
    final = grpo.policy
    ko_after = knockout_hit_rate(judge_of(final), ko_problems, n=recipe.knockout_candidates, votes=1, seed=seed)

    summary = dict(
        accuracy_before_grpo=before["single"],
        accuracy_after_grpo=after["single"],
        accuracy_voting=after["voting"],
        accuracy_voting_before_grpo=before["voting"],
        thinking_before_grpo=before["thinking"],
        thinking_after_grpo=after["thinking"],
        votes=recipe.votes,
        knockout_hit_rate_before_grpo=ko_before,
        knockout_hit_rate_after_grpo=ko_after,
        knockout_candidates=recipe.knockout_candidates,
        knockout_chance=1 / recipe.knockout_candidates,
        heldout_pairs=len(held),
        sft_steps=recipe.sft_steps,
        grpo_steps=recipe.grpo_steps,
        curve=curve,
        seed=seed,
        judge_seconds=time.perf_counter() - t_start,
    )
    return final, summary


def plot_run(summary: dict, rows: list[dict], path: Path) -> Path:
    """demo.png: the judge's held-out accuracy and outcome reward over GRPO, and (after the feedback loop) the
    policy's held-out accuracy over the cycles with the best-of-n picks beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policy = "policy_accuracy_cycles" in summary
    fig, axes = plt.subplots(1, 3 if policy else 2, figsize=(15 if policy else 10, 3.6))
    a, b = axes[:2]
    curve = summary.get("curve", [])
    steps = [c["step"] for c in curve]
    a.plot(steps, [c["single"] for c in curve], "o-", label="accuracy, single vote")
    a.plot(steps, [c["voting"] for c in curve], "s--", label="accuracy, majority vote")
    a.plot(steps, [c["thinking"] for c in curve], "^:", color="grey", label="reasons before the verdict")
    a.axhline(0.5, color="grey", lw=0.8, ls=":")
    a.set(xlabel="GRPO step", ylabel="held-out share", ylim=(0.0, 1.02), title="the judge: held-out accuracy")
    a.legend()
    r = np.asarray([row["reward"] for row in rows if row.get("phase") == "grpo"])
    b.plot(np.arange(1, len(r) + 1), r, alpha=0.35, label="per step")
    if len(r) >= 5:
        k = min(10, len(r))
        b.plot(np.arange(k, len(r) + 1), np.convolve(r, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
    b.set(xlabel="GRPO step", ylabel="mean reward (+1 / -1)", title="the judge: outcome reward")
    b.legend()
    if policy:
        c = axes[2]
        accs = [summary["policy_accuracy_before"]] + summary["policy_accuracy_cycles"]
        c.plot(range(len(accs)), accs, "o-", label=f"policy, sampled answers ({summary['policy_reward']} reward)")
        bon = summary["bon_accuracy"]
        for k, (name, v) in enumerate(bon.items()):
            c.axhline(v, color=f"C{k + 1}", lw=0.9, ls="--", label=f"best-of-{summary['bon_n']} {name} (warm start)")
        c.set(
            xlabel="feedback cycle (0 = warm start)",
            ylabel="held-out accuracy",
            ylim=(0.0, 1.02),
            xticks=range(len(accs)),
            title="the policy, trained on judge verdicts only",
        )
        c.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# XLA:CPU's default lets it use CPU-specific math "at the expense of consistent results across CPUs" (its own
# flag's help), and the demo's sampling turns the last bit of any difference into different figures. Measured
# here: this flag, and the number of cores XLA runs on, change the trained weights; load, XNNPACK, multi-threaded
# Eigen and an AVX2 cap on this AVX-512 CPU do not.
PORTABLE_MATH = "--xla_cpu_enable_platform_dependent_math=false"


def _portable_math() -> None:
    """Before JAX starts its backend (it reads XLA_FLAGS then); a user's own setting of the flag wins."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "platform_dependent_math" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {PORTABLE_MATH}".strip()


def main(argv: list[str]) -> int:
    args = _parse(argv)
    _portable_math()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    recipe = load_recipe(args.recipe, args.set, quick=args.quick)
    try:
        from rich.console import Console
        from rich.table import Table

        console = Console(soft_wrap=True)  # a log file keeps whole lines
    except ImportError:  # rich is a dependency; this only keeps the demo alive in a bare environment
        console, Table = None, None
    s = run(recipe, Path(args.out), args.seed, plot=not args.no_plot, console=console, stage=args.stage)
    rows = [
        ("held-out accuracy, single vote", f"{s['accuracy_before_grpo']:.3f}", f"{s['accuracy_after_grpo']:.3f}"),
        (
            f"held-out accuracy, {s['votes']}-vote majority",
            f"{s['accuracy_voting_before_grpo']:.3f}",
            f"{s['accuracy_voting']:.3f}",
        ),
        (
            "samples that reason before the verdict",
            f"{s['thinking_before_grpo']:.3f}",
            f"{s['thinking_after_grpo']:.3f}",
        ),
        (
            f"best-of-{s['knockout_candidates']} knockout hit rate (chance {s['knockout_chance']:.2f})",
            f"{s['knockout_hit_rate_before_grpo']:.3f}",
            f"{s['knockout_hit_rate_after_grpo']:.3f}",
        ),
    ]
    if "policy_accuracy_after" in s:
        cycles = " -> ".join(f"{a:.3f}" for a in s["policy_accuracy_cycles"])
        rows.append(
            (
                f"policy: held-out accuracy, {len(s['policy_accuracy_cycles'])} feedback cycles ({s['policy_reward']})",
                f"{s['policy_accuracy_before']:.3f}",
                cycles,
            )
        )
        bon = s["bon_accuracy"]
        rows.append(
            (
                f"policy: best-of-{s['bon_n']} pick (warm-start samples): knockout / elo / random / majority / oracle",
                "",
                " / ".join(f"{bon[k]:.3f}" for k in ("knockout", "elo", "random", "majority", "oracle")),
            )
        )
    if Table is not None:
        t = Table(title=f"rrm-jax demo ({s['seconds']:.0f}s) -> {args.out}")
        for c in ("", "after the warm start", "after GRPO / the feedback cycles"):
            t.add_column(c)
        for r in rows:
            t.add_row(*r)
        console.print(t)
    else:
        for r in rows:
            print(*r, sep="\t")
    return 0
