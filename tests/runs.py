"""Helpers for the kill-and-resume tests of training runs (test_train, test_dpo, test_policy_train)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


class Killed(Exception):
    """What a test raises from ``on_step`` to stop a run the way a kill would, after that step's metrics."""


def kill_at(step: int):
    def on_step(s, record):
        if s == step:
            raise Killed

    return on_step


def killed_at(step: int, run) -> None:
    """``run(on_step=...)`` (a ``train`` call) stopped after ``step``."""
    with pytest.raises(Killed):
        run(on_step=kill_at(step))


def records(run_dir, skip: tuple[str, ...] = ()) -> list[dict]:
    """metrics.jsonl without wall-clock figures (``time_*`` and ``skip``): what a resumed run must reproduce."""
    rows = [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_") and k not in skip} for r in rows]
