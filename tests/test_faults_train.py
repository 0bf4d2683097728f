"""Faults of a training run and bad recipes: damaged checkpoints, reruns of finished runs, torn metrics lines,
and recipe values that must fail in one line before any model is built."""

import json
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
        ("mesh=[3,1,1]", "mesh=[3, 1, 1]: needs 3 devices, this machine has 8; e.g. mesh=[1,-1,1]"),
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
def test_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, model, capsys):
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

    # every checkpoint damaged: one line saying what to delete, no traceback
    for step in ("4", "6"):
        d = ck / step / "state"
        for p in d.rglob("*"):
            if p.is_file() and "metadata" not in p.name:
                p.unlink()
    for p in (ck / "2" / "state").rglob("*"):
        if p.is_file() and "metadata" not in p.name:
            p.unlink()
    with pytest.raises(CheckpointError, match=f"no checkpoint restores .*delete {ck}") as e:
        train(_sft(tmp_path, "r", 8), model=model(), progress=False)
    assert "\n" not in str(e.value)


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
    import os
    import re
    import signal
    import subprocess
    import sys
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
