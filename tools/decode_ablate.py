"""Where a decode step's time goes: the sampler's step beside decode loops with pieces removed (issue 12, part 1).

``python tools/decode_ablate.py [--batch 8] [--rounds 3]``

Random Qwen2.5-0.5B shape, fp32, a cache of 160 slots with 128 filled. In interleaved rounds it times, per step:

- the sampler itself (``generate``, greedy, 32 new tokens, from its own decode timer);
- a 16-step ``fori_loop`` of the unrolled decode step (``rrm_jax.sampler.decode.step``) + argmax over weights split once beforehand, in the sampler's
  CPU form (heads-major cache; fused weights through the CPU matmul kernel when it is available);
- the same with attention replaced by its query (no scores, softmax or cache read);
- the output head + argmax alone;
- a jitted sum over 512 MiB (the read bandwidth, to put the rest in bytes).

The differences attribute a step's ms to attention, the head, and sampling / the loop's carry.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rrm_jax.core import cpu_kernel
from rrm_jax.core import model as model_lib
from rrm_jax.core.kv_cache import KVCache
from rrm_jax.sampler import decode

STEPS, SLOTS, FILLED = 16, 160, 128


def _loop(model, batch: int, kind: str):
    def run(state, weights, cache, tok):
        mod = nnx.merge(model.graphdef, state)
        cache = cache.per_layer()

        def body(_, c):
            tok, cache = c
            if kind == "head":
                logits = decode.logits(mod, mod.embed_tokens(tok), weights)
            else:
                logits, cache = decode.step(mod, tok, jnp.ones((batch,), bool), cache, weights)
            return jnp.argmax(logits, -1).astype(jnp.int32), cache

        tok, cache = jax.lax.fori_loop(0, STEPS, body, (tok, cache))
        return tok, cache.stacked()

    return jax.jit(run, donate_argnums=2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/decode_ablate.py", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    from rrm_jax.core import api
    from rrm_jax.core.sharding import make_mesh
    from rrm_jax.sampler import SamplingConfig, generate

    b = args.batch
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    model = api.init("qwen2.5-0.5b", seed=0, mesh=mesh, dtype=jnp.float32)
    cfg = model.config
    fused = cpu_kernel.available()
    weights = jax.jit(lambda st: decode.split_weights(nnx.merge(model.graphdef, st), fused))(model.state)
    rng = np.random.default_rng(0)
    cache0 = KVCache.zeros(cfg, b, SLOTS, jnp.float32, heads_major=True)
    cache0 = cache0.replace(
        valid=cache0.valid.at[:, :FILLED].set(True),
        length=jnp.full((b,), FILLED, jnp.int32),
        k=jnp.asarray(0.1 * rng.normal(size=cache0.k.shape), jnp.float32),
        v=jnp.asarray(0.1 * rng.normal(size=cache0.v.shape), jnp.float32),
    )
    tok0 = jnp.asarray(rng.integers(10, 1000, size=b), jnp.int32)

    loops = {
        "decode_step loop (weights split before)": _loop(model, b, "full"),
        "  without attention": _loop(model, b, "full"),
        "  head + argmax only": _loop(model, b, "head"),
    }

    def timed(f):
        cache = jax.block_until_ready(jax.tree.map(jnp.copy, cache0))
        t0 = time.perf_counter()
        jax.block_until_ready(f(model.state, weights, cache, tok0))
        return (time.perf_counter() - t0) / STEPS

    prompts = [rng.integers(10, cfg.vocab_size - 10, size=FILLED).tolist() for _ in range(b)]
    scfg = SamplingConfig(max_new_tokens=32, temperature=0.0, add_eos_stop=False, max_slots=b)

    def sampler():
        _, st = generate(model, prompts, scfg, chunk_steps=32, return_stats=True)
        return st.decode_seconds / st.decode_steps

    big = jnp.ones((1 << 27,), jnp.float32)
    total = jax.jit(jnp.sum)

    def read():
        t0 = time.perf_counter()
        total(big).block_until_ready()
        return time.perf_counter() - t0

    real_attention = model_lib.attention
    model_lib.attention = cpu_kernel.attention = lambda q, k, v, mask: q  # both decode layers' attention
    try:  # traced and compiled (then cached) with attention replaced by its query
        timed(loops["  without attention"])
    finally:
        model_lib.attention = cpu_kernel.attention = real_attention
    generate(model, prompts, scfg)
    for f in loops.values():
        timed(f)
    read()
    times = {"sampler step (generate)": [], **{k: [] for k in loops}, "jnp.sum over 512 MiB": []}
    for _ in range(args.rounds):
        times["sampler step (generate)"].append(sampler())
        for k, f in loops.items():
            times[k].append(timed(f))
        times["jnp.sum over 512 MiB"].append(read())
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; qwen2.5-0.5b fp32, B={b}, {FILLED} cached tokens; "
        f"CPU matmul kernel {'on' if fused else 'off'}"
    )
    for k, v in times.items():
        v = 1e3 * np.array(v)
        print(f"{k:42s} best {v.min():7.1f} ms  median {np.median(v):7.1f}  all {np.round(v).tolist()}")
    bw = big.nbytes / min(times["jnp.sum over 512 MiB"])
    wbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.state))
    print(f"weights {wbytes / 1e9:.2f} GB at {bw / 1e9:.1f} GB/s read -> {1e3 * wbytes / bw:.0f} ms/step bound")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
