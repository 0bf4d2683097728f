"""What bounds a CPU decode step from below, measured side by side (issue 12, part 1).

``python tools/decode_floor.py [--batch 8 32] [--rounds 5] [--flags] [--slots 160 1088]``

- matmuls: every weight matrix of one Qwen2.5-0.5B decode step (24 layers of q/k/v/o/gate/up/down and the
  [D, V] head; fp32, fresh arrays), chained as a step chains them, at B rows: XLA (one jit), the sampler's CPU
  kernel (``rrm_jax.core.cpu_kernel``, where it builds), NumPy and torch (where installed), in interleaved
  rounds. With ``--flags`` the XLA chain is timed again in subprocesses under each XLA:CPU flag set that may
  route a dot to another kernel library.
- attention: decode attention at T=1 for 24 layers, B=8, Qwen2.5-0.5B heads (14 query, 2 KV, hd 64), over a
  cache of S slots: slot-major ``[B, S, K, hd]`` (the TPU/GPU layout; transposed per layer here) against
  heads-major ``[B, K, S, hd]`` (the CPU layout, ``KVCache.heads_major``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

D, F, L, V, KV, G, HD = 896, 4864, 24, 151936, 2, 7, 64
SHAPES = [(D, D), (D, KV * HD), (D, KV * HD), (D, D), (D, F), (D, F), (F, D)]
FLAGS = {
    "no extra flags (as a subprocess too)": "",
    "XNNPACK dot fusion": "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "YNNPACK dot fusion": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "oneDNN": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "legacy (non-thunk) runtime": "--xla_cpu_use_thunk_runtime=false",
    "single-threaded Eigen": "--xla_cpu_multi_thread_eigen=false",
}


def _weights():
    rng = np.random.default_rng(0)
    ws = [(0.02 * rng.standard_normal(s, dtype=np.float32)) for _ in range(L) for s in SHAPES]
    return ws, 0.02 * rng.standard_normal((D, V), dtype=np.float32)


def _chain(x, ws, head, mm, silu, tanh):
    # tanh keeps the activations bounded (no infs or NaNs to slow an engine down), at B x D elements a call
    for i in range(L):
        q, k, v, o, g, u, d = ws[7 * i : 7 * i + 7]
        x = tanh(x + mm(mm(x, q), o) + 1e-9 * (mm(x, k).sum() + mm(x, v).sum()))
        x = tanh(x + mm(silu(mm(x, g)) * mm(x, u), d))
    return mm(x, head)


def _best(fn, rounds: int) -> float:
    fn()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def matmul_engines(b: int, xla_only: bool = False) -> dict:
    """name -> a no-argument callable running the chain at ``b`` rows to completion."""
    import jax
    import jax.numpy as jnp

    ws, head = _weights()
    jws, jhead = [jnp.asarray(w) for w in ws], jnp.asarray(head)
    f = jax.jit(lambda x, ws, h: _chain(x, ws, h, jnp.matmul, jax.nn.silu, jnp.tanh))
    x = np.ones((b, D), np.float32)
    engines = {"XLA (jax.jit)": lambda: f(x, jws, jhead).block_until_ready()}
    if xla_only:
        return engines
    from rrm_jax.core import cpu_kernel

    if cpu_kernel.available():  # the sampler's CPU decode matmul, over weights packed once beforehand
        pws, phead = jax.jit(lambda ws, h: ([cpu_kernel.pack(w) for w in ws], cpu_kernel.pack(h)))(jws, jhead)
        ns = [w.shape[1] for w in ws]  # (packed, columns) pairs: the packed width is padded to whole panels
        kmm = lambda x, wn: cpu_kernel.matmul(x, *wn)
        g = jax.jit(lambda x, ws, h: _chain(x, list(zip(ws, ns)), (h, V), kmm, jax.nn.silu, jnp.tanh))
        engines["rrm-jax CPU kernel (packed weights)"] = lambda: g(x, pws, phead).block_until_ready()
    engines["NumPy"] = lambda: _chain(x, ws, head, np.matmul, lambda z: z / (1 + np.exp(-z)), np.tanh)
    try:
        import torch
    except ImportError:
        return engines
    tx, tws, th = torch.from_numpy(x), [torch.from_numpy(w) for w in ws], torch.from_numpy(head)
    engines[f"torch {torch.__version__} ({torch.get_num_threads()} threads)"] = lambda: _chain(
        tx, tws, th, torch.matmul, torch.nn.functional.silu, torch.tanh
    )
    return engines


def attention_variants(slots: int) -> dict:
    import jax
    import jax.numpy as jnp

    from rrm_jax.core.ops import attention

    b = 8
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((b, 1, KV * G, HD), dtype=np.float32))
    slot_major = [jnp.asarray(rng.standard_normal((b, slots, KV, HD), dtype=np.float32)) for _ in range(2 * L)]
    heads_major = [k.transpose(0, 2, 1, 3).copy() for k in slot_major]
    mask = jnp.asarray(np.arange(slots)[None, None] < slots - 32).repeat(b, 0)

    def run(caches, to_heads):
        @jax.jit
        def f(q, caches):
            for i in range(L):
                k, v = caches[2 * i], caches[2 * i + 1]
                q = q + 0.01 * attention(q, to_heads(k), to_heads(v), mask)
            return q

        return lambda: f(q, caches).block_until_ready()

    return {
        "slot-major cache, transposed per layer": run(slot_major, lambda k: k.transpose(0, 2, 1, 3)),
        "heads-major cache (CPU layout)": run(heads_major, lambda k: k),
    }


def _report(title: str, engines: dict, rounds: int) -> None:
    times = {k: [] for k in engines}
    for fn in engines.values():
        fn()  # compile / warm
    for _ in range(rounds):  # interleaved: every engine once per round
        for k, fn in engines.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    base = min(next(iter(times.values())))
    print(title)
    for k, v in times.items():
        print(f"  {k:42s} best {1e3 * min(v):8.1f} ms   {min(v) / base:5.2f}x the first row")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/decode_floor.py", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--slots", type=int, nargs="*", default=[160, 1088])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--flags", action="store_true", help="also time the XLA chain under other XLA:CPU flags")
    ap.add_argument("--xla-only", action="store_true", help=argparse.SUPPRESS)  # one subprocess of --flags
    args = ap.parse_args(argv)
    if args.xla_only:
        print(f"{1e3 * _best(matmul_engines(args.batch[0], xla_only=True)['XLA (jax.jit)'], args.rounds):.1f}")
        return 0
    import jax

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; fp32")
    for b in args.batch:
        _report(f"weight matmuls of one decode step, B={b} (2.0 GB of weights)", matmul_engines(b), args.rounds)
        if args.flags:
            for name, flags in FLAGS.items():
                env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
                cmd = [
                    sys.executable,
                    __file__,
                    "--xla-only",
                    "--batch",
                    str(b),
                    "--rounds",
                    str(args.rounds),
                ]
                run = subprocess.run(cmd, env=env, capture_output=True, text=True)
                got = (
                    f"{float(run.stdout.split()[-1]):8.1f} ms"
                    if run.returncode == 0 and run.stdout.split()
                    else ("failed: " + (run.stderr.strip().splitlines() or ["?"])[-1][:80])
                )
                print(f"  XLA with {name:36s} {got}   ({flags or 'XLA_FLAGS as given'})")
    for s in args.slots:
        _report(f"decode attention, 24 layers, B=8, {s} slots", attention_variants(s), args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
