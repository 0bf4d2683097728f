"""Faults of a training run and bad recipes: damaged checkpoints, reruns of finished runs, torn metrics lines,
and recipe values that must fail in one line before any model is built."""

import gc
import json
import os
import re
import sys
from pathlib import Path

import pytest

import rrm_jax
from rrm_jax.cli import main as rrm_main
from rrm_jax.core.errors import CheckpointError, ConfigError, DataError
from rrm_jax.core.tokenizers import byte_tokenizer
from rrm_jax.training.cli import plot_cli
from rrm_jax.training.config import load_config
from rrm_jax.training.loop import train

RECIPE = Path(__file__).parents[1] / "train" / "tiny.toml"


def _sft(tmp_path, run, steps, **extra):
    """A tiny SFT run (no rollouts to compile) that saves every 2 steps."""
    data = tmp_path / "traces.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(8)))
    over = [
        f"run_dir='{tmp_path / run}'",
        f"steps={steps}",
        "mode='sft'",
        "batch_size=2",
        "save_every=2",
        "keep=3",
        "mesh=[1,1,1]",
        "optim.micro_batches=1",
        "async_checkpoint=false",
        "tensorboard=false",
        "grpo.seq_bucket=32",
        "data.synthetic=0",
        f"data.path='{data}'",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(RECIPE, over)


@pytest.fixture()
def model(mesh1):
    return lambda: rrm_jax.init("tiny", seed=0, mesh=mesh1, tokenizer=byte_tokenizer())


def _steps(run_dir):
    return [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ bad recipes
@pytest.mark.parametrize(
    "override, names",
    [
        ("grpo.group_size=-4", "grpo.group_size=-4"),
        ("sampling.temperature=-1", "temperature"),
        ("keep=0", "keep=0"),
        ("grpo.prompts_per_step=0", "grpo.prompts_per_step"),
        ("optim.lr=-1", "optim.lr"),
        ("data.prompt='nope'", "data.prompt"),
        ("data.synthetic=0", "data.path is empty"),
        ("data.path='/nonexistent/pairs.jsonl'", "data.path='/nonexistent/pairs.jsonl': no such file"),
        ("mesh=[3,1,1]", "mesh=[3, 1, 1]: needs 3 devices, have 8 (data=3); e.g. mesh=[1,-1,1]"),
        ("mesh=[1,2]", "mesh=[1, 2]"),
    ],
)
def test_bad_recipe_values_fail_in_one_line_before_anything_runs(tmp_path, capsys, override, names):
    run = tmp_path / "run"
    extra = ["data.synthetic=0"] if override.startswith("data.path") else []
    rc = rrm_main(["train", "tiny", f"run_dir='{run}'", *extra, override])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("rrm-jax train: "), err
    assert names in err, err
    assert not run.exists()  # failed before the run directory (let alone a model) was made


# ------------------------------------------------------------------------------------------ checkpoints
def test_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, model, capsys, monkeypatch):
    train(_sft(tmp_path, "r", 4), model=model(), progress=False)
    ck = tmp_path / "r" / "checkpoints"
    victim = next(
        p
        for p in sorted((ck / "4" / "state").rglob("*"))
        if p.is_file() and p.stat().st_size > 0 and "metadata" not in p.name
    )
    victim.unlink()
    capsys.readouterr()
    out = train(_sft(tmp_path, "r", 6), model=model(), progress=False)
    err = capsys.readouterr().err
    assert out["resumed_from"] == 2
    warn = [ln for ln in err.splitlines() if "does not restore" in ln]
    assert len(warn) == 1 and str(ck / "4") in warn[0] and "resuming from step 2" in warn[0]
    assert (ck / "4.damaged").is_dir()  # kept for a post-mortem, out of orbax's way
    assert _steps(tmp_path / "r") == [1, 2, 3, 4, 5, 6]
    assert sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit())[-1] == 6

    # every checkpoint damaged (its data files cut short): one line saying what to delete, and none of the 46
    # tracebacks tensorstore's reads in flight used to print against orbax's closed event loop
    for step in ("2", "4", "6"):
        for p in (ck / step / "state").rglob("*"):
            if p.is_file() and p.parent.name == "d":
                p.write_bytes(p.read_bytes()[:10])
    seen = []  # what would reach stderr as "Exception ignored ... Traceback" outside pytest
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
    with pytest.raises(CheckpointError, match=f"no checkpoint restores .*delete {ck}") as e:
        train(_sft(tmp_path, "r", 8), model=model(), progress=False)
    assert "\n" not in str(e.value)
    gc.collect()  # the reads' futures report when they are collected
    assert seen == []


def test_keep_zero_is_refused():
    with pytest.raises(ConfigError, match="keep=0: must be >= 1"):
        load_config(RECIPE, ["keep=0"])


# ------------------------------------------------------------------------------------------ finished runs
def test_rerunning_a_finished_run_changes_nothing_and_more_steps_continue(tmp_path, model, capsys):
    first = train(_sft(tmp_path, "r", 2), model=model(), progress=False)
    run = tmp_path / "r"
    files = ["summary.json", "config.toml", "metrics.jsonl", "hf/model.safetensors", "data_report.json"]
    before = {f: ((run / f).read_bytes(), (run / f).stat().st_mtime_ns) for f in files}
    capsys.readouterr()
    again = train(_sft(tmp_path, "r", 2), model=model(), progress=False)
    err = capsys.readouterr().err
    assert "is finished (checkpoint step 2, steps=2); nothing changed" in err and len(err.strip().splitlines()) == 1
    assert {f: ((run / f).read_bytes(), (run / f).stat().st_mtime_ns) for f in files} == before
    assert again["last"] == first["last"] and again["finished"]
    more = train(_sft(tmp_path, "r", 3), model=model(), progress=False)
    assert more["resumed_from"] == 2 and _steps(run) == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


def test_resume_with_another_recipe_or_data_is_refused_and_the_run_keeps_its_config(tmp_path, model):
    """Issue 22.5: a resume with another learning rate or other data went on ("resumed from step 2") and
    overwrote config.toml, losing the run's own. Refused now, every file kept; steps and how it runs may change."""
    train(_sft(tmp_path, "r", 2), model=model(), progress=False)
    run, data = tmp_path / "r", tmp_path / "traces.jsonl"
    kept = {f: (run / f).read_bytes() for f in ("config.toml", "metrics.jsonl", "data_report.json")}
    with pytest.raises(ConfigError, match=r"r holds a run of another recipe or data \(optim.lr=.* there, 0.5 now\)"):
        train(_sft(tmp_path, "r", 4, **{"optim.lr": 0.5}), model=model(), progress=False)
    original = data.read_text()
    data.write_text(original.replace("+1=", "+2="))
    with pytest.raises(ConfigError, match=r"data .*traces.jsonl has other content \(fingerprint \w+ there, \w+ now\)"):
        train(_sft(tmp_path, "r", 4), model=model(), progress=False)
    assert {f: (run / f).read_bytes() for f in kept} == kept
    data.write_text(original)
    more = train(_sft(tmp_path, "r", 4, keep=2, save_every=1), model=model(), progress=False)
    assert more["resumed_from"] == 2 and _steps(run) == [1, 2, 3, 4]


def test_training_data_with_nothing_usable_is_one_line(tmp_path, capsys):
    """Issue 22.9: an empty data file, or one whose rows are all dropped, was a traceback."""
    data = tmp_path / "traces.jsonl"
    for text in ("", json.dumps({"prompt": "1+1=", "nothing": "2"}) + "\n"):
        data.write_text(text)
        over = [
            f"run_dir='{tmp_path / 'run'}'",
            "mode='sft'",
            "data.synthetic=0",
            f"data.path='{data}'",
            "mesh=[1,-1,1]",
        ]
        assert rrm_main(["train", "tiny", *over]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"rrm-jax train: {data}: no usable traces (dropped: " in err, err


def test_a_run_killed_before_its_summary_exports_on_rerun(tmp_path, model, capsys):
    first = train(_sft(tmp_path, "r", 2), model=model(), progress=False)
    run = tmp_path / "r"
    exported = (run / "hf" / "model.safetensors").read_bytes()
    # a kill after the last checkpoint, during the HF export: no summary, no complete export
    (run / "summary.json").unlink()
    for f in (run / "hf").iterdir():
        f.unlink()
    again = train(_sft(tmp_path, "r", 2), model=model(), progress=False)
    assert "finished" not in again and again["resumed_from"] == 2
    assert (run / "hf" / "model.safetensors").read_bytes() == exported
    assert json.loads((run / "summary.json").read_text())["last"] == first["last"]


# ------------------------------------------------------------------------------------------ metrics.jsonl
def test_torn_metrics_line_is_dropped_on_resume_and_plot(tmp_path, model, capsys):
    train(_sft(tmp_path, "r", 2), model=model(), progress=False)
    run = tmp_path / "r"
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.1')  # a power cut mid-write of step 3 (its checkpoint never happened)
    assert plot_cli([str(run)]) == 0 and (run / "curves.png").stat().st_size > 1000
    out = train(_sft(tmp_path, "r", 4), model=model(), progress=False)
    assert out["resumed_from"] == 2 and _steps(run) == [1, 2, 3, 4]


def test_corrupt_metrics_line_in_the_middle_is_named(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\n{"step": 2, "lo\n{"step": 3, "loss": 1}\n')
    assert rrm_main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run / 'metrics.jsonl'}:2: corrupt metrics record" in err
    with pytest.raises(DataError, match=r"metrics.jsonl:2:"):
        from rrm_jax.training.loop import _metrics_file

        _metrics_file(run, 3)


def test_a_second_train_on_a_busy_run_dir_stops_at_once(tmp_path, model, capsys):
    """Issue 22.4: two `train` runs on one run dir both ran (80 metrics lines for 40 steps, two learning-rate
    curves interleaved). The run dir is locked for the whole run; a second one is one line, rc 2, and writes
    nothing; the lock goes with the first run."""
    from rrm_jax.core.locks import exclusive

    cfg = _sft(tmp_path, "r", 2)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with exclusive(run_dir / "train.lock", RuntimeError("held by the test")):  # as a running `train` holds it
        with pytest.raises(ConfigError, match="another `rrm-jax train` is running in this run_dir"):
            train(cfg, model=model(), progress=False)
        assert rrm_main(["train", str(RECIPE), *[f"run_dir='{run_dir}'", "mode='sft'"]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{run_dir}: another `rrm-jax train` is running" in err
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing written by the refused runs, lock released
    assert train(cfg, model=model(), progress=False)["steps"] == 2  # free again: it runs
    assert not (run_dir / "train.lock").exists()


@pytest.mark.slow
def test_sigterm_stops_train_in_one_line_and_it_resumes(tmp_path):
    """Issue 22.10: SIGTERM (what schedulers send) killed `train` at once, mid-checkpoint. It now unwinds as Ctrl-C
    does: one line, exit 143, the checkpoints whole, and the same command resumes from the last one."""
    import signal
    import subprocess
    import time

    cfg = _sft(tmp_path, "r", 400)  # writes the data file; the same overrides go on the command line
    data = tmp_path / "traces.jsonl"
    over = [
        f"run_dir='{tmp_path / 'r'}'",
        "mode='sft'",
        "batch_size=2",
        "save_every=2",
        "keep=3",
        "mesh=[1,1,1]",
        "optim.micro_batches=1",
        "tensorboard=false",
        "grpo.seq_bucket=32",
        "data.synthetic=0",
        f"data.path='{data}'",
        "model='tiny'",
        "tokenizer='bytes'",
    ]
    cmd = [sys.executable, "-m", "rrm_jax.cli", "train", str(RECIPE), "steps=400", *over]
    env = dict(os.environ, XLA_FLAGS=re.sub(r"device_count=\d+", "device_count=1", os.environ["XLA_FLAGS"]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "r" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("rrm-jax train: stopped by SIGTERM")
    done = len(metrics.read_text().splitlines())
    assert cfg.steps == 400 and done < 400
    again = subprocess.run([*cmd[:5], f"steps={done + 2}", *over], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr


@pytest.mark.slow(30)
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_rerun_completes(tmp_path, model):
    """Issue 22.9: a full disk while orbax wrote a checkpoint printed 470 lines (its threads' tracebacks) and a
    traceback for the exit. A real failed write (the file-size limit, which tensorstore meets as a full disk's
    write error) is now one line naming the step, exit 1; metrics stay; orbax's temporary is never taken for a
    checkpoint and is cleaned up when the rerun, with room again, trains the whole run."""
    import resource
    import signal
    import subprocess

    cfg = _sft(tmp_path, "r", 6)
    over = [f"{k}={v!r}" for k, v in [("run_dir", cfg.run_dir), ("data.path", cfg.data.path)]]
    cmd = [sys.executable, "-m", "rrm_jax.cli", "train", str(RECIPE), "steps=6", "mode='sft'", "batch_size=2"]
    cmd += ["save_every=2", "mesh=[1,1,1]", "optim.micro_batches=1", "tensorboard=false", "grpo.seq_bucket=32"]
    cmd += ["data.synthetic=0", "model='tiny'", "tokenizer='bytes'", *over]

    def small_files():  # tiny's checkpoint holds a 0.7 MB file; everything else the run writes is far smaller
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    env["XLA_FLAGS"] = re.sub(r"device_count=\d+", "device_count=1", env["XLA_FLAGS"])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, preexec_fn=small_files)
    lines = [ln for ln in out.stderr.splitlines() if not ln.startswith("sft: ")]
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
    ck = Path(cfg.run_dir) / "checkpoints"
    assert lines[0].startswith(f"rrm-jax train: {ck / '2'}: File too large while writing the checkpoint of step 2")
    left = sorted(p.name for p in ck.iterdir())
    assert "2.orbax-checkpoint-tmp" in left and all(n.endswith(".orbax-checkpoint-tmp") for n in left), left
    assert _steps(Path(cfg.run_dir))[:2] == [1, 2]

    assert train(cfg, model=model(), progress=False)["resumed_from"] == 0
    assert _steps(Path(cfg.run_dir)) == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in ck.iterdir()) == ["2", "4", "6"]


def test_orbax_write_tasks_collected_after_a_failure_log_nothing(tmp_path, caplog):
    """Issue 22.9, as CI met it: after a failed write, orbax's other write tasks still hold the error, and when they
    are collected asyncio logs each one's traceback ('Task exception was never retrieved'), 200 lines after the
    one line. A Checkpointer drops those for orbax's coroutines; anyone else's lost task is still logged."""
    import asyncio

    from rrm_jax.training.checkpoint import Checkpointer

    Checkpointer(tmp_path / "ck").close()
    scope: dict = {}
    exec(
        compile(
            "async def write():\n    raise ValueError('OUT_OF_RANGE: Failed writing')\n",
            f"{os.sep}site{os.sep}orbax{os.sep}serialization.py",
            "exec",
        ),
        scope,
    )
    exec(compile("async def mine():\n    raise ValueError('mine')\n", "mine.py", "exec"), scope)

    def lose(fn):
        loop = asyncio.new_event_loop()
        task = loop.create_task(fn())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert task.done()
        del task
        gc.collect()
        loop.close()

    with caplog.at_level("ERROR", logger="asyncio"):
        lose(scope["write"])
        assert not [r for r in caplog.records if r.name == "asyncio"]
        lose(scope["mine"])
        assert [r.getMessage().splitlines()[0] for r in caplog.records if r.name == "asyncio"] == [
            "Task exception was never retrieved"
        ]
