"""orbax checkpoints of a training run: the TrainState (params, optimizer state, step, RNG) plus JSON
metadata (grain iterator state, rollout counter), saved asynchronously under one step directory.

A checkpoint is only written when every parameter is finite, so a diverged run can never replace the
last good checkpoint with NaNs. Restores go straight into the shardings of a template state.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


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
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template)
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return out["state"], out["meta"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
