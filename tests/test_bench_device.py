"""`rrm-jax bench device --quick` end to end on the CPU: every section present, CPU parity exact, attention n/a."""

import json

import pytest

from rrm_jax.benchmarks.device import SECTIONS, main


@pytest.mark.slow
def test_bench_device_quick(tmp_path):
    out = tmp_path / "device.json"
    assert main(["--quick", "--out", str(out), "--batches", "1", "--train-steps", "1"]) == 0
    res = json.loads(out.read_text())
    for name in SECTIONS + ("compile",):
        assert name in res and "error" not in res[name] and "skipped" not in res[name], (name, res.get(name))
    assert res["device"]["platform"] == "cpu"
    par = res["parity"]
    # device and reference are both the CPU backend here: the same fp32 program must agree to rounding
    for key in ("fp32", "fp32_highest"):
        assert par[key]["max_abs_diff"] <= 1e-5 and par[key]["argmax_agree"] == 1.0, par[key]
    assert par["bf16"]["rel_err"] < 0.05, par["bf16"]
    assert res["attention"]["fused_cudnn"] == "not applicable"
    assert res["train"]["step_s"] > 0 and 0 < res["train"]["mfu"] < 1
    row = res["decode"]["batches"]["1"]
    assert row["decode_steps"] > 0 and row["fraction_of_bandwidth_bound"] > 0
    assert res["compile"]["train_step_s"] is not None and res["compile"]["generate_s"]["1"] is not None
