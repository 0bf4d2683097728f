"""Multi-process training: 2 processes x 4 CPU devices (gloo collectives over localhost) against 1 process x 8
devices on the same recipe. The mesh spans both processes, so the batch, params and optimizer state are sharded
across them, sampled tokens and log-probs are gathered back through rrm_jax.distributed.to_host, and only
process 0 writes files."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", TOKENIZERS_PARALLELISM="false")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    from rrm_jax.hf_io import SafetensorsFile

    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "multi")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=_env(4, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=2,
                                       JAX_PROCESS_ID=i))
             for i in range(2)]
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "single")], env=_env(8), capture_output=True,
                            text=True, timeout=600)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert single.returncode == 0, single.stderr[-3000:]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]

    rows = {k: [json.loads(x) for x in (tmp_path / k / "metrics.jsonl").read_text().splitlines()] for k in ("multi", "single")}
    assert len(rows["multi"]) == len(rows["single"]) == 2
    for m, s in zip(rows["multi"], rows["single"]):
        assert m["reward_std"] > 0 and m["grad_norm"] > 0  # the steps really updated the weights
        for k in ("reward_mean", "response_len", "tokens"):
            assert m[k] == s[k], k  # the same samples were drawn
        for k in ("loss", "grad_norm", "entropy", "kl", "old_policy_kl"):
            np.testing.assert_allclose(m[k], s[k], rtol=1e-4, atol=1e-6, err_msg=k)
    a, b = (SafetensorsFile(tmp_path / k / "hf" / "model.safetensors") for k in ("multi", "single"))
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        np.testing.assert_allclose(a.get(k).astype(np.float32), b.get(k).astype(np.float32), atol=1e-5, err_msg=k)
    # process 1 wrote nothing of its own: one metrics file, one summary
    assert json.loads((tmp_path / "multi" / "summary.json").read_text())["steps"] == 2
