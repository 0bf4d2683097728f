"""Multi-process runs: 2 processes (gloo collectives over localhost) against 1 process with as many devices, on
the same job. The mesh spans both processes, so the batch, params, optimizer state and KV cache are sharded across
them, sampled tokens and log-probs are gathered back through rrm_jax.core.distributed.to_host, and only process 0
writes files."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")


def _env(devices: int, **extra) -> dict:
    # conftest's flags with this run's device count
    flags = re.sub(r"device_count=\d+", f"device_count={devices}", os.environ["XLA_FLAGS"])
    env = dict(os.environ, XLA_FLAGS=flags, TOKENIZERS_PARALLELISM="false")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_pair(cmd, devices_each: int, timeout: int = 600) -> list[str]:
    """``cmd`` in 2 coordinated processes of ``devices_each`` CPU devices each; returns their outputs."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(devices_each, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=i),
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


@pytest.mark.slow(100)
def test_two_processes_train_like_one(tmp_path):
    from rrm_jax.core.hf_io import SafetensorsFile

    _run_pair([sys.executable, str(WORKER), str(tmp_path / "multi")], 4)
    single = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "single")],
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    rows = {
        k: [json.loads(x) for x in (tmp_path / k / "metrics.jsonl").read_text().splitlines()]
        for k in ("multi", "single")
    }
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


@pytest.mark.slow(170)
def test_two_processes_evaluate_like_one(tmp_path):
    """`rrm-jax eval --distributed`: the dataset is built once, both processes judge every chunk, one writes."""
    from rrm_jax.core.tokenizers import byte_tokenizer

    byte_tokenizer().save_pretrained(tmp_path / "tok")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"q{i}",
                    "query": f"{i}+{i}=?",
                    "response_a": str(2 * i),
                    "response_b": str(2 * i + 1),
                    "label": 0,
                }
            )
            + "\n"
            for i in range(6)
        )
    )

    def cmd(out, *extra):
        return [
            sys.executable,
            "-m",
            "rrm_jax.cli",
            "eval",
            "--dataset",
            "jsonl",
            "--data",
            str(pairs),
            "--out",
            str(out),
            "--data-dir",
            str(out / "tfds"),
            "--model",
            "tiny",
            "--tokenizer",
            str(tmp_path / "tok"),
            "--dtype",
            "float32",
            "--mesh",
            "2,2,1",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
            "--votes",
            "2",
            "--batch-size",
            "4",
            "--progress",
            "false",
            "--plots",
            "false",
            *extra,
        ]

    _run_pair(cmd(tmp_path / "multi", "--distributed", "true"), 2)
    single = subprocess.run(cmd(tmp_path / "single"), env=_env(4), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    def records(run):
        rows = [json.loads(x) for x in (tmp_path / run / "records-v2-tnone.jsonl").read_text().splitlines()]
        return [{k: r[k] for k in ("id", "reasonings", "orders", "sample_verdicts", "tokens")} for r in rows]

    multi, one = records("multi"), records("single")
    assert [r["id"] for r in multi] == [f"q{i}" for i in range(6)]  # each item once: one writer
    assert multi == one  # the same samples, token for token
    assert sum(r["tokens"] for r in multi) > 0
