"""Training: GRPO (and SFT) for reward reasoning models, as a library (:class:`Trainer`) and a CLI.

Programmatic use (what ``rrm-jax demo`` does)::

    import jax.numpy as jnp, rrm_jax
    from rrm_jax.train import Trainer
    from rrm_jax.train_config import TrainConfig, OptimConfig, GRPOConfig

    model = rrm_jax.init("tiny", compute_dtype=jnp.bfloat16, tokenizer=tok)     # fp32 master, bf16 compute
    cfg = TrainConfig(steps=50, optim=OptimConfig(lr=1e-3),
                      grpo=GRPOConfig(prompts_per_step=8, group_size=8, max_new_tokens=48, seq_bucket=256))
    tr = Trainer(model, cfg, render=lambda q, a, b: my_prompt(q, a, b))       # reward: verdict vs label
    tr.sft_step(prompt_ids, completion_ids)     # token cross-entropy on completions -> metrics dict
    tr.grpo_step(pairs)                         # pairs: [{query, chosen, rejected}] -> rollout + mu updates
    judge_model = tr.policy                     # Model sharing the live params (no host copy)

Shapes are bucketed (rows fixed per step kind, lengths to ``seq_bucket`` or a power of two), so a tiny
model compiles each step once. ``rrm-jax train train/<recipe>.toml key=value ...`` runs :func:`train`:
a grain pipeline over pairs, rollouts, updates, metrics.jsonl, orbax checkpoints with exact resume, and
an HF export of the final policy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .distributed import initialize, is_main, to_host
from . import shipped
from .progress import Progress
from .rl import rewards as rewards_lib
from .rl.loss import LossConfig
from .rl.rollout import assign_sides, make_render, pack, rollout, to_prompt
from .train_config import DataConfig, GRPOConfig, OptimConfig, TrainConfig, dump_toml, load_config
from .train_step import TrainState, cached, init_state, make_logprob_fn, make_optimizer, make_train_step, place_batch

__all__ = [
    "Trainer", "TrainConfig", "TrainState", "OptimConfig", "GRPOConfig", "DataConfig", "make_train_step",
    "train", "cli", "plot_cli", "load_config",
]


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
        self.model, self.cfg = model, config
        g = config.grpo
        self.loss_cfg = LossConfig(
            eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta, aggregation=g.aggregation,
            norm_length=g.norm_length or g.max_new_tokens, logprob_chunk=g.logprob_chunk,
        )
        per_step = g.inner_iters if config.mode == "grpo" else 1
        self.total_updates = total_updates or config.steps * per_step
        self.tx, self.schedule = make_optimizer(config.optim, self.total_updates, model.state)
        self.state: TrainState = init_state(model, self.tx, config.seed)
        # The frozen reference is the model's own (undonated) params, stored in the compute dtype (the forward
        # casts to it anyway, so log-probs are unchanged and a bf16 run keeps half the bytes); beta = 0: none.
        self.ref_params = self.compute_copy(model.state) if g.beta > 0 else None
        self.reward_fn = rewards_lib.get(reward_fn or g.reward)
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

    def step_fn(self, kind: str):
        if kind not in self._steps:
            self._steps[kind] = make_train_step(
                self.model, self.cfg.optim, self.total_updates, kind=kind, loss_cfg=self.loss_cfg,
                micro_batches=self.cfg.optim.micro_batches,
            )
        return self._steps[kind]

    def sampling(self):
        from .sampler import SamplingConfig

        g = self.cfg.grpo
        return SamplingConfig(
            max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
            max_think_tokens=g.max_think_tokens or None, max_slots=g.max_slots, n=g.group_size,
            seed=(self.cfg.seed * 1_000_003 + self.iteration) % (2**31),
        )

    def update(self, batch: dict[str, np.ndarray], kind: str) -> dict[str, float]:
        """One optimizer step on a packed host batch; returns host metrics."""
        fn = self.step_fn(kind)
        self.state, metrics = fn(self.state, place_batch(self.model, batch, fn.keys))
        return {k: float(v) for k, v in to_host(metrics).items()}

    # -- SFT --------------------------------------------------------------------------------------
    def sft_step(self, prompt_ids_or_batch, completion_ids: Sequence[Sequence[int]] | None = None) -> dict:
        """Token cross-entropy on the completions given their prompts (or on a packed batch dict)."""
        if completion_ids is None:
            batch = prompt_ids_or_batch
        else:
            batch = pack(prompt_ids_or_batch, completion_ids, rows=max(self.sft_rows, _ceil(len(completion_ids), self.model.batch_multiple() * self.cfg.optim.micro_batches)),
                         seq_bucket=self.cfg.grpo.seq_bucket)
        return self.update(batch, "sft")

    # -- GRPO -------------------------------------------------------------------------------------
    def prepare(self, pairs: Sequence[dict]) -> list[dict]:
        """Raw pairs -> prompts in a seeded random order (examples that already carry prompt_ids pass)."""
        if all("prompt_ids" in p for p in pairs):
            return list(pairs)
        flips = assign_sides(pairs, seed=self.cfg.seed, step=self.iteration, swap=self.cfg.data.swap)
        return [to_prompt(p, bool(f), self.render, self.model.tokenizer) for p, f in zip(pairs, flips)]

    def logprobs(self, params, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self._logprob is None:
            self._logprob = make_logprob_fn(self.model, self.loss_cfg.logprob_chunk)
        arrays = place_batch(self.model, batch, ("tokens", "positions", "mask", "targets"))
        return self._logprob(params, arrays["tokens"], arrays["positions"], arrays["mask"], arrays["targets"])

    def forced_len(self) -> int:
        if self._forced_len is None:
            sfx = self.sampling().forced_suffix
            tok = self.model.tokenizer
            self._forced_len = len(sfx) if not isinstance(sfx, str) else (len(tok.encode(sfx, add_special_tokens=False)) if tok else 0)
        return self._forced_len

    def grpo_step(self, pairs: Sequence[dict]) -> dict:
        """One rollout batch: sample G per pair, reward, advantages, then ``inner_iters`` updates."""
        g = self.cfg.grpo
        examples = self.prepare(pairs)
        t0 = time.perf_counter()
        ro = rollout(
            self.sampling_policy(), examples, group_size=g.group_size, sampling=self.sampling(), reward_fn=self.reward_fn,
            advantage=g.advantage, adv_eps=g.adv_eps, rows=max(self.rows, _ceil(len(examples) * g.group_size, self.model.batch_multiple() * self.cfg.optim.micro_batches)),
            seq_bucket=g.seq_bucket, forced_len=self.forced_len(), generate_fn=self.generate_fn,
        )
        t1 = time.perf_counter()
        batch = ro.batch
        if g.old_logprobs == "recompute":
            batch["old_logp"] = to_host(self.logprobs(self.state.params, batch))
        if g.beta > 0:
            batch["ref_logp"] = to_host(self.logprobs(self.ref_params, batch))
        t2 = time.perf_counter()
        per_iter = [self.update(batch, "grpo") for _ in range(g.inner_iters)]
        t3 = time.perf_counter()
        self.iteration += 1
        metrics = dict(per_iter[-1])
        metrics["skipped"] = float(sum(m["skipped"] for m in per_iter))
        # before any update the trainer's log-probs should equal the old ones: this measures sampler/trainer drift
        metrics["old_policy_kl"] = per_iter[0]["approx_kl_old"]
        metrics.update(ro.stats)
        metrics.update(time_rollout=t1 - t0, time_logprob=t2 - t1, time_update=t3 - t2)
        return metrics


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


# ------------------------------------------------------------------------------------------ the loop
def build_model(cfg: TrainConfig):
    """The policy from a recipe: random init for a preset/TOML, or an HF checkpoint directory / hub id."""
    from .api import load_or_init
    from .sharding import make_mesh
    from .data.train_pipeline import load_tokenizer

    mesh = make_mesh(cfg.mesh)
    dt, cdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.compute_dtype)
    tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    model = load_or_init(cfg.model, seed=cfg.seed, mesh=mesh, dtype=dt, compute_dtype=cdt,
                         tokenizer=tok, remat=cfg.remat, attention_impl=cfg.attention)
    if model.tokenizer is None:
        raise ValueError(f"{cfg.model}: no tokenizer; set tokenizer = 'bytes' | 'demo' | a path in the recipe")
    return model


def _metrics_file(run_dir: Path, keep_upto: int) -> Path:
    """metrics.jsonl truncated to steps <= keep_upto (a resumed run rewrites what came after its checkpoint)."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= keep_upto]
        path.write_text("".join(ln + "\n" for ln in lines))
    return path


def train(config: TrainConfig, *, model=None, reward_fn=None, generate_fn=None, on_step: Callable | None = None,
          progress: bool = True) -> dict:
    """Run a recipe to ``config.steps`` (resuming from run_dir's latest checkpoint); returns a summary.

    ``on_step(step, record)`` is called after each step's metrics are written (tests use it to kill a run).
    """
    from .checkpoint import Checkpointer
    from .data.train_pipeline import PairPipeline, SFTPipeline, prepare_data

    if config.distributed:
        initialize()
    main = is_main()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        (run_dir / "config.toml").write_text(dump_toml(config))
    model = model or build_model(config)
    trainer = Trainer(model, config, reward_fn, generate_fn=generate_fn)
    data_path, data_report = prepare_data(config, run_dir)
    if config.mode == "grpo":
        pipe = PairPipeline(data_path, trainer.render, model.tokenizer, config)
    else:
        pipe = SFTPipeline(data_path, model.tokenizer, config)
    report = dict(data_report, **pipe.report)
    if main:
        (run_dir / "data_report.json").write_text(json.dumps(report, indent=1))

    ckpt = Checkpointer(run_dir / "checkpoints", keep=config.keep, async_=config.async_checkpoint)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        trainer.state, meta = ckpt.restore(latest, trainer.state)
        pipe.set_state(meta["data_iter"])
        trainer.iteration = int(meta["iteration"])
        start = latest
        print(f"resumed from {run_dir}/checkpoints step {latest}", file=sys.stderr)
    mpath = _metrics_file(run_dir, start) if main else Path(os.devnull)
    tb = TensorBoard.open(run_dir / "tb", start) if config.tensorboard and main else None
    t_start = time.perf_counter()
    try:
        last = _loop(config, trainer, pipe, ckpt, mpath, start, on_step, progress and main, tb)
    finally:
        ckpt.close()  # waits for an in-flight async save: an exception never leaves a half-written step
        if tb is not None:
            tb.close()
    summary = {"steps": config.steps, "resumed_from": start, "seconds": time.perf_counter() - t_start, "last": last,
               "skipped_total": int(trainer.state.skipped), "data": report}
    if config.export_hf and config.steps > start:
        summary["export"] = str(__import__("rrm_jax").save_hf(trainer.policy, run_dir / "hf"))
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _loop(config, trainer, pipe, ckpt, mpath, start, on_step, progress, tb=None) -> dict:
    last = {}
    bar = Progress(config.mode, config.steps, completed=start, fmt="reward {reward:+.3f}  loss {loss:.4f}",
                   enabled=progress)
    with mpath.open("a") as mf, bar:
        for step in range(start + 1, config.steps + 1):
            batch = pipe.next()
            if config.mode == "grpo":
                metrics = trainer.grpo_step(batch)
            else:
                metrics = trainer.sft_step(*batch)
                trainer.iteration += 1
            record = {"step": step, **metrics}
            mf.write(json.dumps(record) + "\n")
            mf.flush()
            if tb is not None:
                tb.scalars(step, metrics)
            last = record
            bar.update(step, reward=metrics.get("reward_mean", float("nan")), loss=metrics["loss"])
            if on_step is not None:
                on_step(step, record)
            if step % config.save_every == 0 or step == config.steps:
                ckpt.save(step, trainer.state, {"data_iter": pipe.get_state(), "iteration": trainer.iteration, "step": step})
    return last


class TensorBoard:
    """Scalars for TensorBoard (``tensorboard --logdir RUN_DIR/tb``); metrics.jsonl stays the record of truth."""

    def __init__(self, log_dir: Path, start: int):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self.writer = EventFileWriter(str(log_dir))
        # a (re)start at step `start + 1`: TensorBoard drops what a killed run logged from there on
        self.writer.add_event(Event(wall_time=time.time(), step=start + 1,
                                    session_log=SessionLog(status=SessionLog.START)))

    @classmethod
    def open(cls, log_dir: Path, start: int) -> "TensorBoard | None":
        try:
            return cls(log_dir, start)
        except ImportError:  # optional: pip install tensorboard
            return None

    def scalars(self, step: int, values: dict) -> None:
        vals = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.writer.add_event(self._event(wall_time=time.time(), step=step, summary=self._summary(value=vals)))

    def close(self) -> None:
        self.writer.close()


# ------------------------------------------------------------------------------------------ CLIs
def cli(argv: list[str]) -> int:
    """``rrm-jax train RECIPE.toml [key=value ...]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="rrm-jax train", description="train an RRM with GRPO (or SFT) from a recipe")
    ap.add_argument("recipe", help="a recipe TOML, or the name of a shipped one (tiny, rrm-7b, rrm-32b)")
    ap.add_argument("overrides", nargs="*", help="key=value or section.key=value (e.g. steps=10 optim.lr=1e-6)")
    args = ap.parse_args(argv)
    recipe = shipped.find(args.recipe, "train")
    if recipe is None:
        print(f"rrm-jax train: recipe {args.recipe}: no such file (shipped recipes: "
              f"{', '.join(n for n in shipped.names('train') if n != 'demo')})", file=sys.stderr)
        return 2
    try:
        cfg = load_config(recipe, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"rrm-jax train: {e}", file=sys.stderr)
        return 2
    summary = train(cfg)
    last = summary["last"]
    print(json.dumps({k: summary[k] for k in ("steps", "resumed_from", "seconds", "skipped_total")}
                     | {"last": {k: last.get(k) for k in ("reward_mean", "accuracy", "loss", "kl") if k in last}}))
    return 0


PLOTS = (("reward_mean", "reward"), ("accuracy", "verdict accuracy"), ("kl", "KL to reference"),
         ("response_len", "response length (tokens)"), ("loss", "loss"), ("entropy", "entropy"))


def plot_cli(argv: list[str]) -> int:
    """``rrm-jax plot RUN_DIR``: reward, accuracy, KL and response-length curves -> RUN_DIR/curves.png."""
    import argparse

    ap = argparse.ArgumentParser(prog="rrm-jax plot")
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    path = Path(args.run_dir) / "metrics.jsonl"
    if not path.exists():
        print(f"rrm-jax plot: {path} does not exist", file=sys.stderr)
        return 2
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    out = Path(args.out or Path(args.run_dir) / "curves.png")
    plot_metrics(rows, out)
    print(out)
    return 0


def plot_metrics(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in PLOTS if any(k in r for r in rows)]
    ncols = min(3, max(len(panels), 1))
    nrows = -(-max(len(panels), 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
