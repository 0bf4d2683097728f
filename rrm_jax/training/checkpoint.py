"""orbax checkpoints of a training run: the TrainState (params, optimizer state, step, RNG) plus JSON
metadata (grain iterator state, rollout counter), saved asynchronously under one step directory.

A checkpoint is only written when every parameter is finite, so a diverged run can never replace the
last good checkpoint with NaNs. Restores go straight into the shardings of a template state. A checkpoint
that no longer restores (a file lost or cut short) is named, moved aside to ``<step>.damaged`` and the next
older one is tried, so one damaged directory costs the steps since the previous save, not the run. A save that
cannot be written (a full disk) surfaces as one ``OSError`` naming the step, while the steps saved before stay
whole and orbax's half-written temporary is never taken for a checkpoint (and is cleaned up on the next start).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from rrm_jax.core.distributed import barrier, is_main
from rrm_jax.core.errors import CheckpointError


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _orbax_errors(record: logging.LogRecord) -> bool:
    """Drop orbax's own error logs (a failed write logs its traceback from each of its threads): the failure reaches
    the caller as one OSError from ``save``/``wait``/``close``."""
    return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _quiet_closed_loop(hook):
    """After a read or write fails, tensorstore completes the operations still in flight against orbax's already
    closed event loop, and each reports 'Event loop is closed' as an unraisable exception (a traceback on stderr,
    possibly after the process's last line): noise beside the one line the failure gets. Process-wide and kept, as
    the reports outlive the failed call; any other unraisable exception still reaches the previous hook."""

    def quiet(u):
        if not (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"):
            hook(u)

    quiet.rrm_quiet = True
    return quiet


def _orbax_lost_tasks(record: logging.LogRecord) -> bool:
    """A failed write leaves orbax's other write tasks holding the same error; when they are collected (any time
    later, possibly after the process's one line) asyncio logs each one's traceback as 'Task exception was never
    retrieved'. The failure already reached the caller, so drop those for orbax's coroutines only."""
    text = record.getMessage()
    return not (text.startswith("Task exception was never retrieved") and f"{os.sep}orbax{os.sep}" in text)


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int = 3, async_: bool = True):
        self.directory = Path(directory).absolute()
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_, create=True, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=opts)
        self._in_flight: int | None = None  # the step whose (async) write has not been confirmed yet
        self._failed = False
        logging.getLogger("absl").addFilter(_orbax_errors)
        if _orbax_lost_tasks not in logging.getLogger("asyncio").filters:  # process-wide and kept, as the hook below
            logging.getLogger("asyncio").addFilter(_orbax_lost_tasks)
        if not getattr(sys.unraisablehook, "rrm_quiet", False):
            sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)

    def _confirm(self, fn, *args, **kwargs):
        """Run a manager call that waits for the write in flight; a failed write becomes one OSError."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - orbax wraps tensorstore's errors in ValueError and friends
            text = " ".join(str(e).split())
            code = re.search(r"os_error_code='?(\d+)", text)
            if not (isinstance(e, OSError) or code or "RESOURCE_EXHAUSTED" in text or "Failed writing" in text):
                raise
            self._failed = True
            num = getattr(e, "errno", None) or (int(code.group(1)) if code else errno.EIO)
            # orbax may report a background write's failure at a later call: the path in the error names its step
            named = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)
            step = int(named.group(1)) if named else self._in_flight
            raise OSError(
                num,
                f"{os.strerror(num)} while writing the checkpoint of step {step} (a rerun resumes from the one "
                "before it)",
                str(self.directory / str(step)),
            ) from e

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict) -> bool:
        """Save (async) unless some parameter is not finite; returns whether a checkpoint was started."""
        if not bool(_all_finite(state.params)):
            print(f"checkpoint: step {step} has non-finite params; keeping the last good checkpoint", file=sys.stderr)
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._confirm(self.manager.wait_until_finished)  # the previous write, so a failure names its own step
        self._in_flight = step
        return self._confirm(self.manager.save, step, args=args, force=True)

    def restore(self, step: int, template):
        """(state, meta) of ``step``; arrays land in the shardings/dtypes of ``template``'s arrays."""
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template
        )
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return out["state"], out["meta"]

    def restore_latest(self, template):
        """(step, state, meta) of the newest checkpoint that restores, or None when there is none.

        Restoring is collective, so every process must settle on the same step: all of them try the same steps
        (the ones on the shared disk) newest first, and only the main process moves the damaged ones aside.
        """
        bad: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore(step, template)
            except Exception as e:  # noqa: BLE001 - tensorstore/orbax raise many kinds for a lost or torn file
                bad.append((step, " ".join(str(e).split())[:200] or type(e).__name__))
                continue
            if bad:
                names = ", ".join(str(self.directory / str(s)) for s, _ in bad)
                print(
                    f"checkpoint: {names} does not restore ({bad[0][1]}); resuming from step {step}, the damaged "
                    "one kept as <step>.damaged",
                    file=sys.stderr,
                )
                self._set_aside([s for s, _ in bad])
            return step, state, meta
        if bad:
            step, why = bad[0]
            raise CheckpointError(
                f"{self.directory}: no checkpoint restores (newest, step {step}: {why}); if the "
                f"recipe changed, train in a new run_dir, else delete {self.directory} to start over"
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Rename damaged step directories so the resumed run can save those steps again (nothing deleted)."""
        if is_main():
            for step in steps:
                src = self.directory / str(step)
                dst, n = self.directory / f"{step}.damaged", 1
                while dst.exists():
                    n += 1
                    dst = self.directory / f"{step}.damaged{n}"
                src.rename(dst)
        barrier("checkpoint-set-aside")
        self.manager.reload()

    def wait(self):
        self._confirm(self.manager.wait_until_finished)

    def close(self):
        try:
            if not self._failed:
                self.wait()
        finally:
            logging.getLogger("absl").removeFilter(_orbax_errors)
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - a failed write re-raises here; it was reported by wait/save
                if not self._failed:
                    raise
