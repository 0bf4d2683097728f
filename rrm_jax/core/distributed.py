"""Multi-host runs (TPU pod slices, multi-node GPU): one process per host, all running the same program.

After :func:`initialize`, ``jax.devices()`` lists every device of every host, so the one mesh from
:func:`rrm_jax.make_mesh` spans the whole slice and the jitted steps need no change. Three things do differ,
and they all live here:

* host values: an array sharded across hosts is not fully addressable by one process, so fetching it
  (sampled tokens, log-probs, exported weights) goes through :func:`to_host`, an all-gather;
* host inputs: every process builds the same global batch from the same seeded pipeline and
  ``jax.device_put`` keeps each process's own shards (simple, and exact for data this small per step);
* files: only the main process writes logs, summaries and exports (:func:`is_main`); orbax coordinates
  checkpoint writes itself, and :func:`barrier` orders a main-process write before the others read it.
"""

from __future__ import annotations

import os

import jax
import numpy as np


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Join a multi-process run; returns whether this is one (more than one process).

    Arguments default to ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``; with none of
    them set, JAX detects the cluster itself (Cloud TPU, SLURM, Open MPI, Kubernetes).
    """
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return jax.process_count() > 1


def is_main() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """All processes wait here (no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(tree):
    """``jax.device_get`` that also works for arrays sharded across hosts (gathered to every process)."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree_util.tree_map(get, tree)
