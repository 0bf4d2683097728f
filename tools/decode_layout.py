"""Which weight layout makes a decode step's small-row matmuls fastest on this backend (issue 12, part 1).

``python tools/decode_layout.py [--batch 8 32] [--shapes qwen|head|square] [--rounds 5]``

Every matrix one decode step reads (Qwen2.5-0.5B: 24 layers of q/k/v/o/gate/up/down, or its [D, V] head, or
the issue's 30 matrices of 4096 x 4096) as separate arrays, multiplied by B rows in one jit, three ways:

- ``x @ W`` with W stored ``[in, out]`` (our parameter layout);
- ``dot_general`` contracting the last axis of both, W stored ``[out, in]`` (HF's layout);
- ``x @ W`` with each W split in two along ``out`` (two independent dots a multi-threaded runtime could overlap).

Plus a jitted sum over 1 GiB (the raw read bandwidth) and a NumPy copy. The variants run in interleaved rounds and
each round's time is divided by that round's ``[in, out]`` time, so machine load moves all of them together; the
median and range of those ratios are printed, beside the ratio of best times.
"""

from __future__ import annotations

import argparse
import gc
import time

import jax
import jax.numpy as jnp
import numpy as np

QWEN = dict(D=896, F=4864, H=14, K=2, hd=64, L=24, V=151936)


def shapes(kind: str) -> list[tuple[int, int]]:
    """(in, out) of every matrix in the chain."""
    if kind == "square":
        return [(4096, 4096)] * 30
    q = QWEN
    if kind == "head":
        return [(q["D"], q["V"])]
    per = [
        (q["D"], q["H"] * q["hd"]),
        (q["D"], q["K"] * q["hd"]),
        (q["D"], q["K"] * q["hd"]),
        (q["H"] * q["hd"], q["D"]),
        (q["D"], q["F"]),
        (q["D"], q["F"]),
        (q["F"], q["D"]),
    ]
    return per * q["L"]


def variants(batch: int, kind: str):
    key = jax.random.key(0)
    w_io = [jax.random.normal(jax.random.fold_in(key, i), s, jnp.float32) for i, s in enumerate(shapes(kind))]
    w_oi = [jnp.asarray(w.T) for w in w_io]
    w_sp = [tuple(jnp.asarray(c) for c in jnp.array_split(w, 2, axis=1)) for w in w_io]
    xs = {d: jnp.ones((batch, d), jnp.float32) for d in {w.shape[0] for w in w_io}}
    nbytes = sum(w.size * w.dtype.itemsize for w in w_io)

    @jax.jit
    def in_out(xs, ws):
        return sum(jnp.sum(xs[w.shape[0]] @ w) for w in ws)

    @jax.jit
    def out_in(xs, ws):
        return sum(jnp.sum(jax.lax.dot_general(xs[w.shape[1]], w, (((1,), (1,)), ((), ())))) for w in ws)

    @jax.jit
    def split(xs, ws):
        return sum(jnp.sum(jnp.concatenate([xs[c[0].shape[0]] @ p for p in c], axis=1)) for c in ws)

    big = jnp.ones((1 << 28,), jnp.float32)
    total = jax.jit(jnp.sum)
    host = np.ones((1 << 27,), np.float32)
    dst = np.empty_like(host)
    runs = {
        "x @ W, W [in, out]": (lambda: in_out(xs, w_io).block_until_ready(), nbytes),
        "last-axis dot, W [out, in]": (lambda: out_in(xs, w_oi).block_until_ready(), nbytes),
        "x @ W, split in 2 on out": (lambda: split(xs, w_sp).block_until_ready(), nbytes),
        "jnp.sum over 1 GiB (read)": (lambda: total(big).block_until_ready(), big.nbytes),
        "numpy copy 512 MiB (read+write)": (lambda: np.copyto(dst, host), 2 * host.nbytes),
    }
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/decode_layout.py", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--shapes", choices=("qwen", "head", "square"), default="qwen")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.shapes} matrices, fp32, "
        f"{args.rounds} interleaved rounds; ratio = time / same round's [in, out] time"
    )
    runs = None
    for b in args.batch:
        runs = None  # free the previous batch's arrays before making the next
        gc.collect()
        runs = variants(b, args.shapes)
        for f, _ in runs.values():
            f()  # compile / warm
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (f, _) in runs.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        base = np.array(times["x @ W, W [in, out]"])
        for name, (_, nbytes) in runs.items():
            t = np.array(times[name])
            r = t / base
            print(
                f"B={b:3d} {name:32s} best {1e3 * t.min():7.1f} ms ({nbytes / t.min() / 1e9:5.1f} GB/s, "
                f"{t.min() / base.min():.2f}x the best [in, out]); per-round ratio median {np.median(r):.2f} "
                f"[{r.min():.2f}-{r.max():.2f}]",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
