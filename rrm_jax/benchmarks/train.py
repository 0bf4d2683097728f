"""`rrm-jax bench train`: train-step throughput and a GRPO step's time split, measured in one run.

1. Train step (the SFT step: same forward, chunked log-probs, backward, AdamW update as GRPO's) on a random
   Qwen2.5-0.5B-shaped model at seq 512: tokens/s and achieved model FLOP/s, as a fraction of a square
   matmul's FLOP/s measured in the same process in the compute dtype.
   Model FLOPs = 3 x forward FLOPs (backward = 2 x forward) with the forward counted as in `bench forward`:
   ``6*N*tokens`` for the matmul weights N (incl. the LM head) + attention's QK^T and PV over T x T.
   Rematerialisation's recomputation is not counted (this is MFU-style, model FLOPs only).
2. GRPO step (tiny model by default): seconds in rollout (sampling G per prompt + rewards + packing),
   log-prob passes (reference / old policy) and the update(s).

Shrink for CPU: ``rrm-jax bench train --layers 2 --seq 128 --batch 2``.

``--pages both`` times the train step in two fresh processes, with 4 KiB pages and with glibc's huge pages
(:mod:`rrm_jax.core.hugepages`, what the ``rrm-jax`` command gives itself), and prints the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from rrm_jax.benchmarks.forward import best_seconds, forward_flops
from rrm_jax.core.model import REMAT


def matmul_peak(n: int, dtype, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    mm(a, b).block_until_ready()
    return 2.0 * n**3 / best_seconds(lambda: mm(a, b).block_until_ready(), repeats)


def bench_step(args) -> dict:
    import rrm_jax
    from rrm_jax.core.config import resolve_config
    from rrm_jax.core.sharding import make_mesh
    from rrm_jax.training.config import OptimConfig
    from rrm_jax.training.objectives import SFT
    from rrm_jax.training.step import init_state, make_optimizer, make_train_step, place_batch

    cfg = resolve_config(args.model)
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    mesh = make_mesh()
    cdt = jnp.dtype(args.compute_dtype)
    model = rrm_jax.init(
        cfg, seed=0, mesh=mesh, dtype=jnp.float32, compute_dtype=cdt, remat=args.remat, attention_impl=args.attention
    )
    opt = OptimConfig(lr=1e-5, micro_batches=args.micro_batches)
    step = make_train_step(model, opt, 1000, SFT(args.chunk), micro_batches=args.micro_batches)
    tx, _ = make_optimizer(opt, 1000)
    state = init_state(model, tx)
    b, t = args.batch, args.seq
    rng = np.random.default_rng(0)
    tok = rng.integers(0, cfg.vocab_size, (b, t + 1)).astype(np.int32)
    batch = dict(
        tokens=tok[:, :-1],
        targets=tok[:, 1:],
        mask=np.ones((b, t), bool),
        positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
        loss_mask=np.ones((b, t), bool),
    )
    placed = place_batch(model, batch, SFT.keys)
    t0 = time.perf_counter()
    state, m = step(state, placed)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0

    def run():
        nonlocal state
        for _ in range(args.steps):
            state, met = step(state, placed)
        jax.block_until_ready(met)

    sec = best_seconds(run, args.repeats) / args.steps
    flops = 3.0 * forward_flops(cfg, b, t)
    peak = matmul_peak(args.matmul_n, cdt)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(model.state))
    return dict(
        device=str(jax.devices()[0].device_kind),
        n_devices=len(jax.devices()),
        model=args.model,
        layers=cfg.num_layers,
        params=int(n_params),
        batch=b,
        seq=t,
        remat=args.remat,
        compute_dtype=str(cdt),
        micro_batches=args.micro_batches,
        compile_s=round(compile_s, 2),
        step_s=sec,
        tokens_per_s=b * t / sec,
        model_flops_per_s=flops / sec,
        matmul_peak_flops_per_s=peak,
        fraction_of_matmul_peak=flops / sec / peak,
    )


def bench_grpo(args) -> dict:
    import rrm_jax
    from rrm_jax.core.sharding import make_mesh
    from rrm_jax.core.tokenizers import byte_tokenizer
    from rrm_jax.sampler import SamplingConfig
    from rrm_jax.training.config import GRPOConfig, OptimConfig, TrainConfig
    from rrm_jax.training.data import synthetic_pairs
    from rrm_jax.training.trainer import Trainer

    def parity(prompts, completions, batch):  # reward with signal on a random model
        return np.array(
            [1.0 if np.mean(np.asarray(c.token_ids) % 2 == 0) > 0.5 else -1.0 for c in completions], np.float32
        )

    model = rrm_jax.init(
        args.grpo_model,
        seed=0,
        mesh=make_mesh(),
        tokenizer=byte_tokenizer(),
        compute_dtype=jnp.dtype(args.compute_dtype),
    )
    g = GRPOConfig(
        prompts_per_step=args.prompts,
        group_size=args.group,
        seq_bucket=256,
        beta=0.01,
        inner_iters=args.inner_iters,
        logprob_chunk=64,
    )
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, max_slots=args.prompts * args.group)
    cfg = TrainConfig(steps=args.grpo_steps + 1, optim=OptimConfig(lr=1e-4), grpo=g, sampling=sampling)

    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prompt="short"))
    tr = Trainer(model, cfg, parity)
    pairs = synthetic_pairs(args.prompts * (args.grpo_steps + 1), seed=1)
    chunks = [pairs[i * args.prompts : (i + 1) * args.prompts] for i in range(args.grpo_steps + 1)]
    tr.grpo_step(chunks[0])  # compiles
    rows = [tr.grpo_step(c) for c in chunks[1:]]
    mean = lambda k: float(np.mean([r[k] for r in rows]))
    total = mean("time_rollout") + mean("time_logprob") + mean("time_update")
    return dict(
        model=args.grpo_model,
        prompts=args.prompts,
        group=args.group,
        new_tokens=args.new_tokens,
        inner_iters=args.inner_iters,
        rollout_s=mean("time_rollout"),
        logprob_s=mean("time_logprob"),
        update_s=mean("time_update"),
        total_s=total,
        split={k: round(mean(f"time_{k}") / total, 3) for k in ("rollout", "logprob", "update")},
    )


def pages_side_by_side(argv: list[str]) -> dict:
    """The train step measured in two child processes, 4 KiB pages then huge pages; the ratio of their times."""
    import os
    import subprocess
    import sys
    import tempfile

    from rrm_jax.core import hugepages

    if not hugepages.wanted({}):
        raise SystemExit("rrm-jax bench train: --pages both needs Linux, glibc >= 2.35 and THP in madvise mode")
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {"RRM_JAX_HUGEPAGES": "0"}
    runs = {}
    for name, env in (("4k", plain), ("huge", hugepages.environ_with_tunable(plain) | {"RRM_JAX_HUGEPAGES": "1"})):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            cmd = [sys.executable, "-m", "rrm_jax.cli", "bench", "train", *argv, "--skip", "grpo", "--json", out]
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                runs[name] = json.load(f)["train_step"]
        print(f"  {name:>4} pages: {runs[name]['step_s'] * 1e3:.1f} ms/step", flush=True)
    runs["speedup"] = runs["4k"]["step_s"] / runs["huge"]["step_s"]
    print(f"  huge pages: {runs['speedup']:.2f}x the train step on 4 KiB pages (GLIBC_TUNABLES={hugepages.TUNABLE}=1)")
    return runs


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rrm-jax bench train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, default=0, help="override the layer count (0 = the preset's)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro-batches", type=int, default=1)
    ap.add_argument("--remat", default="none", choices=REMAT)
    ap.add_argument("--attention", default="xla")
    ap.add_argument("--compute-dtype", default="bfloat16" if jax.default_backend() != "cpu" else "float32")
    ap.add_argument("--chunk", type=int, default=256, help="log-prob sequence chunk")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--matmul-n", type=int, default=4096 if jax.default_backend() != "cpu" else 1024)
    ap.add_argument("--grpo-model", default="tiny")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--inner-iters", type=int, default=1)
    ap.add_argument("--grpo-steps", type=int, default=3)
    ap.add_argument("--skip", choices=("step", "grpo"), default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--pages", choices=("as-is", "both"), default="as-is", help="both: the train step on 4 KiB and on huge pages"
    )
    args = ap.parse_args(argv)
    out = {}
    if args.pages == "both":
        step_args = ("model", "layers", "seq", "batch", "micro_batches", "remat", "attention", "compute_dtype", "chunk")
        step_args += ("steps", "repeats", "matmul_n")
        out["pages"] = pages_side_by_side([f"--{k.replace('_', '-')}={getattr(args, k)}" for k in step_args])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return 0
    if args.skip != "step":
        r = out["train_step"] = bench_step(args)
        print(
            f"train step  {r['model']} L={r['layers']} B={r['batch']} T={r['seq']} {r['compute_dtype']} remat={r['remat']} "
            f"on {r['n_devices']}x {r['device']}"
        )
        print(
            f"  {r['step_s'] * 1e3:.1f} ms/step  {r['tokens_per_s']:.0f} tokens/s  {r['model_flops_per_s'] / 1e12:.3f} TFLOP/s "
            f"= {100 * r['fraction_of_matmul_peak']:.1f}% of the measured matmul peak ({r['matmul_peak_flops_per_s'] / 1e12:.3f} TFLOP/s)"
            f"  [compile {r['compile_s']} s]"
        )
    if args.skip != "grpo":
        g = out["grpo_step"] = bench_grpo(args)
        print(
            f"GRPO step   {g['model']} {g['prompts']} prompts x G={g['group']}, {g['new_tokens']} new tokens, mu={g['inner_iters']}"
        )
        print(
            f"  rollout {g['rollout_s']:.3f} s  log-prob {g['logprob_s']:.3f} s  update {g['update_s']:.3f} s  "
            f"split {g['split']}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0
