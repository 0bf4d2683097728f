"""orbax checkpoints of a training run: the TrainState (params, optimizer state, step, RNG) plus JSON
metadata (grain iterator state, rollout counter), saved asynchronously under one step directory.

A checkpoint is only written when every parameter is finite, so a diverged run can never replace the
last good checkpoint with NaNs. Restores go straight into the shardings of a template state. A checkpoint
that no longer restores (a file lost or cut short) is named, moved aside to ``<step>.damaged`` and the next
older one is tried, so one damaged directory costs the steps since the previous save, not the run.
"""

from __future__ import annotations

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


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int = 3, async_: bool = True):
        self.directory = Path(directory).absolute()
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict) -> bool:
        """Save (async) unless some parameter is not finite; returns whether a checkpoint was started."""
        if not bool(_all_finite(state.params)):
            print(f"checkpoint: step {step} has non-finite params; keeping the last good checkpoint", file=sys.stderr)
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self.manager.save(step, args=args, force=True)

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
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
