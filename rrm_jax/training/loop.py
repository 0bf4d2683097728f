"""``train(config)``: a recipe run end to end. Builds the model and the data pipeline, resumes from the run's
latest checkpoint, steps the :class:`~rrm_jax.training.trainer.Trainer`, and writes ``metrics.jsonl`` (one line
per step, flushed), TensorBoard scalars, orbax checkpoints and the final HF export into ``run_dir``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from rrm_jax.core.api import load_or_init, save_hf
from rrm_jax.core.configs import dump_toml, write_toml
from rrm_jax.core.distributed import initialize, is_main
from rrm_jax.core.errors import ConfigError, DataError
from rrm_jax.core.locks import exclusive
from rrm_jax.core.progress import Progress
from rrm_jax.core.sharding import make_mesh
from rrm_jax.core.tokenizers import load_tokenizer
from rrm_jax.training.checkpoint import Checkpointer
from rrm_jax.training.config import TrainConfig, preflight
from rrm_jax.training.data import prepare_data
from rrm_jax.training.modes import mode_of
from rrm_jax.training.rl import judge_rewards
from rrm_jax.training.trainer import Trainer


def build_model(cfg: TrainConfig):
    """The policy from a recipe: random init for a preset/TOML, or an HF checkpoint directory / hub id."""
    mesh = make_mesh(cfg.mesh)
    dt, cdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.compute_dtype)
    tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    model = load_or_init(
        cfg.model,
        seed=cfg.seed,
        mesh=mesh,
        dtype=dt,
        compute_dtype=cdt,
        tokenizer=tok,
        remat=cfg.remat,
        attention_impl=cfg.attention,
        rules=cfg.sharding_rules,
    )
    if model.tokenizer is None:
        raise ConfigError(f"{cfg.model}: no tokenizer; set tokenizer = 'bytes' | 'demo' | a path in the recipe")
    return model


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl. A torn last line (a write cut by a kill or a power loss) is dropped, as
    evaluation records are; a corrupt line before it is a DataError naming file:line."""
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
    rows = []
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: corrupt metrics record ({e.msg}); delete that line to go on") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise DataError(f"{path}:{n}:step: metrics record without a step")
        rows.append(rec)
    return rows


def _metrics_file(run_dir: Path, keep_upto: int) -> Path:
    """metrics.jsonl truncated to steps <= keep_upto (a resumed run rewrites what came after its checkpoint)."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        rows = [r for r in read_metrics(path) if r["step"] <= keep_upto]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        have = {r["step"] for r in rows}
        lost = [s for s in range(1, keep_upto + 1) if s not in have]
        if lost:  # the checkpoint survived a crash that took these lines with it: the curve has a gap there
            print(
                f"{path}: no record of step(s) {_spans(lost)} (lost in a crash); training goes on from step "
                f"{keep_upto + 1}",
                file=sys.stderr,
            )
    return path


def _spans(steps: list[int]) -> str:
    return (
        f"{steps[0]}"
        if len(steps) == 1
        else f"{steps[0]}..{steps[-1]}"
        if steps[-1] - steps[0] + 1 == len(steps)
        else ", ".join(map(str, steps))
    )


def _finished(run_dir: Path, config: TrainConfig, done: int) -> dict:
    """A rerun of a run that already reached its steps: say so and leave every file as it is."""
    print(
        f"rrm-jax train: {run_dir} is finished (checkpoint step {done}, steps={config.steps}); nothing changed. "
        f"Pass steps=N with N > {done} to train further",
        file=sys.stderr,
    )
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    if not isinstance(summary, dict):
        summary = {}
    base = {"steps": done, "resumed_from": done, "seconds": 0.0, "last": {}, "skipped_total": 0}
    return {**base, **summary, "finished": True}


# what may change between a run and its resume: how it runs, not what it trains (steps continues or extends it)
RESUMABLE_CHANGES = (
    "steps",
    "run_dir",
    "mesh",
    "distributed",
    "save_every",
    "keep",
    "async_checkpoint",
    "export_hf",
    "tensorboard",
    "remat",
    "attention",
)


def data_fingerprint(config: TrainConfig) -> str | None:
    """A content hash of the recipe's data file (None for synthetic data, which the seed defines)."""
    if not config.data.path or not Path(config.data.path).is_file():
        return None
    from rrm_jax.data.sources import fingerprint_file

    return fingerprint_file(config.data.path)


def check_resume(run_dir: Path, config: TrainConfig) -> None:
    """Refuse, in one line, to resume ``run_dir`` with a recipe or data other than its own: its config.toml and
    the data fingerprint in data_report.json against this run's (fields only one side has are not compared:
    runs written before them). Only :data:`RESUMABLE_CHANGES` may differ."""
    import tomllib

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    try:
        old = dict(flat(tomllib.loads((run_dir / "config.toml").read_text())))
        was = json.loads((run_dir / "data_report.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return  # no readable record of the run's recipe (an older or hand-made run dir): nothing to compare
    new = dict(flat(tomllib.loads(dump_toml(config))))
    changed = [
        f"{k}={old[k]!r} there, {new[k]!r} now"
        for k in sorted(old.keys() & new.keys())
        if old[k] != new[k] and k.split(".")[0] not in RESUMABLE_CHANGES
    ]
    now = data_fingerprint(config)
    if was is not None and now is not None and was != now:
        changed.append(f"data {config.data.path} has other content (fingerprint {was} there, {now} now)")
    if changed:
        raise ConfigError(
            f"{run_dir} holds a run of another recipe or data ({'; '.join(changed)}); resuming would mix two runs: "
            "use another run_dir, or the run's own values (steps may change, and how it runs: mesh, checkpointing, "
            "remat)"
        )


def _summary_steps(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "summary.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def train(config: TrainConfig, **kw) -> dict:
    """Run a recipe to ``config.steps`` (resuming from run_dir's latest checkpoint); returns a summary.

    Keywords: ``model``, ``reward_fn``, ``generate_fn``, ``progress`` and ``on_step(step, record)``, called after
    each step's metrics are written (tests use it to kill a run). The run directory is locked for the whole run:
    a second ``train`` on it stops at once instead of interleaving its metrics and checkpoints with the first's.
    """
    if config.distributed:
        initialize()
    # every recipe check before the run directory (and its lock) is made
    preflight(config, None if kw.get("model") is not None else jax.device_count())
    run_dir = Path(config.run_dir)
    if not is_main():
        return _train(config, **kw)
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = ConfigError(f"{run_dir}: another `rrm-jax train` is running in this run_dir; wait for it or use another")
    with exclusive(run_dir / "train.lock", busy):
        return _train(config, **kw)


def _train(
    config: TrainConfig,
    *,
    model=None,
    reward_fn=None,
    generate_fn=None,
    on_step: Callable | None = None,
    progress: bool = True,
) -> dict:
    main = is_main()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=config.keep, async_=config.async_checkpoint)
    tb = None
    try:  # closing waits for an in-flight async save: an exception never leaves a half-written step
        done = ckpt.latest_step()
        # decided from the files alone, so every process agrees; a run killed after its last checkpoint but before
        # its summary (the HF export runs in between) is not finished: it resumes with no steps left and exports
        if done is not None and done >= config.steps and _summary_steps(run_dir) >= done:
            return _finished(run_dir, config, done)
        if done is not None:  # a resume continues this run: the recipe and the data must be the run's
            check_resume(run_dir, config)
        if main:
            write_toml(config, run_dir / "config.toml")
        model = model or build_model(config)
        mode = mode_of(config)
        if mode.judged and reward_fn is None:
            reward_fn = judge_rewards.from_config(config, model)
        trainer = Trainer(model, config, reward_fn, generate_fn=generate_fn)
        data_path, data_report = prepare_data(config, run_dir, mode)
        pipe = mode.pipeline(data_path, trainer, config)
        report = dict(data_report, **pipe.report, fingerprint=data_fingerprint(config))
        if main:
            (run_dir / "data_report.json").write_text(json.dumps(report, indent=1))

        start = 0
        restored = ckpt.restore_latest(trainer.state)
        if restored is not None:
            latest, trainer.state, meta = restored
            pipe.set_state(meta["data_iter"])
            trainer.iteration = int(meta["iteration"])
            start = latest
            print(f"resumed from {run_dir}/checkpoints step {latest}", file=sys.stderr)
        mpath = _metrics_file(run_dir, start) if main else Path(os.devnull)
        tb = TensorBoard.open(run_dir / "tb", start) if config.tensorboard and main else None
        t_start = time.perf_counter()
        last = _loop(config, trainer, pipe, ckpt, mpath, start, on_step, progress and main, tb)
    finally:
        ckpt.close()
        if tb is not None:
            tb.close()
    if not last and main:  # no step left to run: the last record is the one the killed run wrote
        last = (read_metrics(mpath) or [{}])[-1]
    summary = {
        "steps": config.steps,
        "resumed_from": start,
        "seconds": time.perf_counter() - t_start,
        "last": last,
        "skipped_total": int(trainer.state.skipped),
        "data": report,
    }
    if config.export_hf and (config.steps > start or not (run_dir / "hf" / "config.json").exists()):
        summary["export"] = str(save_hf(trainer.policy, run_dir / "hf"))
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _loop(config, trainer, pipe, ckpt, mpath, start, on_step, progress, tb=None) -> dict:
    last = {}
    mode = trainer.mode
    bar = Progress(mode.name, config.steps, completed=start, fmt=mode.bar, enabled=progress)
    with mpath.open("a") as mf, bar:
        for step in range(start + 1, config.steps + 1):
            metrics = mode.step(trainer, pipe.next())
            record = {"step": step, **metrics}
            mf.write(json.dumps(record) + "\n")
            mf.flush()
            if tb is not None:
                tb.scalars(step, metrics)
            last = record
            bar.update(
                step,
                # DPO's bar shows its reward margin under the same name
                reward=metrics.get("reward_mean", metrics.get("reward_margin", float("nan"))),
                loss=metrics["loss"],
            )
            if on_step is not None:
                on_step(step, record)
            if step % config.save_every == 0 or step == config.steps:
                # the lines up to a checkpoint reach the disk before it does, so a power loss cannot leave a
                # checkpoint whose curve has a gap (a plain flush only reaches the OS)
                if mf.name != os.devnull:  # only process 0 keeps the record (fsync of /dev/null is EINVAL)
                    os.fsync(mf.fileno())
                ckpt.save(
                    step, trainer.state, {"data_iter": pipe.get_state(), "iteration": trainer.iteration, "step": step}
                )
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
        self.writer.add_event(
            Event(wall_time=time.time(), step=start + 1, session_log=SessionLog(status=SessionLog.START))
        )

    @classmethod
    def open(cls, log_dir: Path, start: int) -> TensorBoard | None:
        try:
            return cls(log_dir, start)
        except ImportError:  # optional: pip install tensorboard
            return None

    def scalars(self, step: int, values: dict) -> None:
        vals = [
            self._summary.Value(tag=k, simple_value=float(v))
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self.writer.add_event(self._event(wall_time=time.time(), step=step, summary=self._summary(value=vals)))

    def close(self) -> None:
        self.writer.close()
