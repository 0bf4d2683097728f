"""``train(config)``: a recipe run end to end. Builds the model and the data pipeline, resumes from the run's
latest checkpoint, steps the :class:`~rrm_jax.training.trainer.Trainer`, and writes ``metrics.jsonl`` (one line
per step, flushed), TensorBoard scalars, orbax checkpoints and the final HF export into ``run_dir``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import jax.numpy as jnp

from rrm_jax.core.api import load_or_init, save_hf
from rrm_jax.core.configs import write_toml
from rrm_jax.core.distributed import initialize, is_main
from rrm_jax.core.progress import Progress
from rrm_jax.core.sharding import make_mesh
from rrm_jax.core.tokenizers import load_tokenizer
from rrm_jax.training.checkpoint import Checkpointer
from rrm_jax.training.config import TrainConfig
from rrm_jax.training.data import PairPipeline, SFTPipeline, prepare_data
from rrm_jax.training.trainer import Trainer


def build_model(cfg: TrainConfig):
    """The policy from a recipe: random init for a preset/TOML, or an HF checkpoint directory / hub id."""
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
    if config.distributed:
        initialize()
    main = is_main()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        write_toml(config, run_dir / "config.toml")
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
        summary["export"] = str(save_hf(trainer.policy, run_dir / "hf"))
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


