"""Progress output for long work (training, evaluation, sampling, benchmarks), in one place.

On a terminal it is a rich progress bar. When the stream is not a terminal (``rrm-jax demo > log``, CI, a
batch job) a bar would be dropped and the job would look hung, so it prints a plain line instead: once
at the start, then every ``RRM_JAX_PROGRESS_SECONDS`` (30 s by default) and once at the end. A
heartbeat thread keeps that promise while one long call (a compile, a 40-second train step) blocks the loop.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import IO

DEFAULT_EVERY = 30.0


def _interval() -> float:
    raw = os.environ.get("RRM_JAX_PROGRESS_SECONDS", "")
    try:
        return float(raw) if raw else DEFAULT_EVERY
    except ValueError:
        raise ValueError(f"RRM_JAX_PROGRESS_SECONDS={raw!r} is not a number of seconds") from None


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``with Progress("GRPO", total=200, fmt="reward {reward:+.3f}") as p: p.update(advance=1, reward=r)``.

    ``fmt`` formats the keyword fields passed to :meth:`update` (both in the bar and the plain lines);
    ``rate`` names the unit of a throughput column (e.g. ``"cmp"``). ``enabled=False`` shows nothing.
    Output goes to ``stream`` (stderr by default) or to a given rich ``console``; ``bar=False`` shows
    nothing on a terminal (for commands that print their own progress there) and keeps the plain lines.
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        *,
        completed: int = 0,
        fmt: str = "",
        rate: str = "",
        enabled: bool = True,
        stream: IO | None = None,
        every: float | None = None,
        console=None,
        bar: bool = True,
    ):
        self.description, self.total, self.completed, self.fmt, self.rate = description, total, completed, fmt, rate
        # a rich Console already printing to the stream shares the bar, so its prints stay above it
        self.console = console
        self.stream = console.file if console is not None else stream if stream is not None else sys.stderr
        self.every = _interval() if every is None else every
        self.fields: dict = {}
        isatty = console.is_terminal if console is not None else getattr(self.stream, "isatty", lambda: False)()
        self.mode = "off" if not enabled or (isatty and not bar) else ("bar" if isatty else "lines")
        self._start_done = completed

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Progress:
        self.t0 = self._last = time.perf_counter()
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            cols = [
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[text]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            ]
            console = self.console or Console(file=self.stream)
            self._rich = RichProgress(*cols, console=console, transient=False)
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, completed=self.completed, text="")
        elif self.mode == "lines":
            self._lock, self._stop = threading.Lock(), threading.Event()
            self._say(self._line("started"))
            self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="rrm-jax-progress")
            self._beat.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.mode == "bar":
            self._rich.stop()
        elif self.mode == "lines":
            self._stop.set()
            self._beat.join()
            self._say(self._line("stopped" if exc_type else "done"))

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(max(self.every, 0.05), 1.0)):
            if time.perf_counter() - self._last >= self.every:
                self._say(self._line())

    # ------------------------------------------------------------------ updates
    def update(self, completed: int | None = None, *, advance: int = 0, **fields) -> None:
        self.completed = (self.completed if completed is None else completed) + advance
        self.fields.update(fields)
        if self.mode == "bar":
            self._rich.update(self._task, completed=self.completed, text=self._text())
        elif self.mode == "lines" and time.perf_counter() - self._last >= self.every:
            self._say(self._line())

    def _text(self) -> str:
        parts = []
        if self.rate:
            parts.append(
                f"{(self.completed - self._start_done) / max(time.perf_counter() - self.t0, 1e-9):.2f} {self.rate}/s"
            )
        if self.fmt and self.fields:
            try:
                parts.append(self.fmt.format(**self.fields))
            except (KeyError, ValueError, TypeError):  # a field not reported yet, or None
                pass
        return "  ".join(parts)

    def _line(self, state: str = "") -> str:
        elapsed = time.perf_counter() - self.t0
        if self.total:
            done_now = self.completed - self._start_done
            left = (self.total - self.completed) * elapsed / done_now if done_now > 0 else math.inf
            head = f"{self.completed}/{self.total} ({100 * self.completed / self.total:.0f}%)"
            tail = f"{_clock(elapsed)} elapsed, ~{_clock(left)} left" if state != "done" else f"{_clock(elapsed)}"
        else:
            head, tail = f"{self.completed}", _clock(elapsed)
        text = self._text()
        return f"{self.description}: {head}{' ' + state if state else ''}, {tail}{'  ' + text if text else ''}"

    def _say(self, line: str) -> None:
        with self._lock:
            self._last = time.perf_counter()
            print(line, file=self.stream, flush=True)
