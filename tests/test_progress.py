"""Progress output when it is not a terminal: plain lines at the start, every interval (even while one call
blocks), and at the end; nothing when disabled; a bar (not lines) on a terminal."""

from __future__ import annotations

import io
import re
import time

from rrm_jax.core.progress import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_off_a_terminal():
    out = io.StringIO()
    with Progress("GRPO", 4, fmt="reward {reward:+.2f}", stream=out, every=0.0) as p:
        for step in range(1, 5):
            p.update(step, reward=step / 4)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("GRPO: 0/4 (0%) started")
    assert re.match(r"GRPO: 2/4 \(50%\), 0:00 elapsed, ~0:00 left  reward \+0\.50", lines[2])
    assert lines[-1].startswith("GRPO: 4/4 (100%) done") and lines[-1].endswith("reward +1.00")


def test_heartbeat_while_a_call_blocks_and_no_flood():
    out = io.StringIO()
    with Progress("SFT warm start", 10, stream=out, every=0.3) as p:
        p.update(advance=1)  # within the interval: no line
        time.sleep(1.0)  # one long call: the heartbeat speaks for it
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("started, 0:00 elapsed, ~? left")
    beats = [ln for ln in lines[1:-1] if ln.startswith("SFT warm start: 1/10 (10%)")]
    assert 2 <= len(beats) <= 4, lines
    assert lines[-1].startswith("SFT warm start: 1/10 (10%) done")


def test_resumed_progress_and_rate():
    out = io.StringIO()
    with Progress("judging", 100, completed=40, rate="cmp", stream=out, every=0.0) as p:
        p.update(advance=10)
    body = out.getvalue()
    assert "judging: 40/100 (40%) started" in body and "judging: 50/100 (50%)" in body and "cmp/s" in body


def test_disabled_and_terminal_modes():
    out = io.StringIO()
    with Progress("x", 3, stream=out, enabled=False) as p:
        p.update(advance=3)
    assert out.getvalue() == ""
    tty = _Tty()
    with Progress("x", 3, stream=tty, bar=False) as p:  # commands that print their own output on a terminal
        p.update(advance=3)
    assert tty.getvalue() == ""
    tty = _Tty()
    with Progress("bar", 3, stream=tty) as p:
        p.update(advance=3)
    assert "bar" in tty.getvalue() and "started" not in tty.getvalue()
