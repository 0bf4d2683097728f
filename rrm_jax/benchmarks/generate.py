"""`rrm-jax bench generate`: rrm-jax's sampler vs transformers' generate, and continuous vs static batching.

Everything is measured side by side in one run (the ratios hold while machine load moves the absolute
numbers):

1. Greedy fp32 decoding of one random Qwen2.5-0.5B-shaped model (ours is exported with ``save_hf`` and
   loaded by transformers, so both run the same weights), batch B, prompt T, N new tokens. Prefill and
   decode are reported separately. transformers' prefill is ``generate(max_new_tokens=1)``; its decode is
   ``generate(max_new_tokens=N)`` minus that, over N-1 steps. Ours come from the sampler's own timers.
2. Decode as a fraction of the memory-bandwidth bound: every decode step must stream all weights once
   (the tied embedding serves as the LM head; the embedding lookup itself reads only B rows) and the K/V cache
   up to the current length, so ``bound = (weight + K/V bytes) / raw read bandwidth``, the bandwidth being a
   jitted sum over a large array measured in the same run.
3. Tunix's vanilla sampler on the same weights and prompts (``rrm_jax.benchmarks.tunix_ref``; the ``[bench]``
   extra installs it; without it the run says so and goes on), timed like transformers.
4. Long-tailed workload: requests whose generation lengths are mostly short with a few 8x longer (forced by
   per-request max_new_tokens), served with continuous batching vs the static path.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from rrm_jax.benchmarks import rates
from rrm_jax.benchmarks.forward import best_seconds


def read_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """Best-of-N bytes/s of a jitted full reduction over a float32 array (a pure streaming read)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    best = best_seconds(lambda: f(x).block_until_ready(), repeats)
    return nbytes / best


def weight_bytes_per_step(model) -> int:
    from rrm_jax.core.api import params_dict

    total = 0
    for p in params_dict(model).values():
        total += p.size * p.dtype.itemsize
    return total


def matmul_floor_ms(model, batch: int, repeats: int = 3) -> float:
    """ms for ``[batch, in] @ W`` over every weight matrix a decode step reads (each layer's and the LM head), as
    fresh per-layer arrays in one jit: what this backend's matmuls alone cost, with no attention, cache,
    sampling or loop. A decode step cannot beat it on this backend, whatever the bandwidth bound says."""
    from rrm_jax.core.api import params_dict
    from rrm_jax.core.params import is_stacked

    shapes = []
    for name, p in params_dict(model).items():
        per = p.shape[1:] if is_stacked(name) else p.shape
        if len(per) < 2:
            continue  # norms and biases: vectors
        if name == "embed":  # read by the LM head only when tied; the token lookup is a gather
            if model.config.tie_word_embeddings:
                shapes.append(((per[1], per[0]), p.dtype))
            continue
        k = int(np.prod(per[:-1])) if name == "o_proj" else per[0]
        shapes += [((k, int(np.prod(per)) // k), p.dtype)] * (p.shape[0] if is_stacked(name) else 1)
    weights = [jnp.ones(s, dt) for s, dt in shapes]
    key = lambda w: f"{w.shape[0]}:{w.dtype}"  # noqa: E731
    xs = {key(w): jnp.ones((batch, w.shape[0]), w.dtype) for w in weights}

    @jax.jit
    def chain(xs, weights):
        return sum(jnp.sum(xs[key(w)] @ w) for w in weights)

    chain(xs, weights).block_until_ready()
    return 1e3 * best_seconds(lambda: chain(xs, weights).block_until_ready(), repeats)


def _prompts(rng, batch, length, vocab):
    return [rng.integers(10, vocab - 10, size=length).tolist() for _ in range(batch)]


def bench_ours(model, prompts, new_tokens: int, repeats: int, bw_bytes: int):
    from rrm_jax.sampler import SamplingConfig, generate

    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, add_eos_stop=False, max_slots=len(prompts))
    generate(model, prompts, cfg)  # compile
    best = None
    for _ in range(repeats):
        # bandwidth measured right before and after the run it bounds (the machine's load moves both)
        bw = read_bandwidth(bw_bytes, 3)
        out, st = generate(model, prompts, cfg, chunk_steps=new_tokens, return_stats=True)
        bw = (bw + read_bandwidth(bw_bytes, 3)) / 2
        if best is None or st.decode_seconds < best[0].decode_seconds:
            best = (st, out, bw)
    st, out, bw = best
    b = len(prompts)
    return {
        "prefill_tok_s": st.prefill_tokens / st.prefill_seconds,
        "decode_tok_s": b * st.decode_steps / st.decode_seconds,
        "step_ms": 1e3 * st.decode_seconds / st.decode_steps,
        "e2e_tok_s": b * new_tokens / (st.prefill_seconds + st.decode_seconds),
        "tokens": [c.token_ids for c in out],
        "bandwidth": bw,
    }


def bench_transformers(hf, prompts, new_tokens: int, repeats: int):
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None)

    def run(n):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        return time.perf_counter() - t0, out

    run(2)  # warm-up
    pre = min(run(1)[0] for _ in range(repeats))
    total, out = min((run(new_tokens) for _ in range(repeats)), key=lambda r: r[0])
    b, t = ids.shape
    return {**rates(b, t, new_tokens, pre, total), "tokens": out[:, t:].tolist()}


def long_tail(model, args) -> tuple[float, float, int]:
    """tokens/s of continuous vs static batching on a long-tailed set of generation lengths."""
    from rrm_jax.sampler import SamplingConfig, generate

    rng = np.random.default_rng(1)
    n, short = args.tail_requests, args.tail_short
    lengths = rng.integers(max(1, short // 2), short + 1, size=n)
    longs = rng.choice(n, size=max(1, n // 8), replace=False)
    lengths[longs] = 8 * short  # a few 8x longer
    prompts = _prompts(rng, n, args.tail_prompt, model.config.vocab_size)
    cfg = SamplingConfig(
        max_new_tokens=int(lengths.max()), temperature=0.0, add_eos_stop=False, max_slots=args.tail_slots
    )
    res = {}
    for name, cont in (("continuous", True), ("static", False)):
        generate(model, prompts, cfg, max_new_tokens=lengths, continuous=cont)  # compiles every refill shape
        t0 = time.perf_counter()
        out, st = generate(model, prompts, cfg, max_new_tokens=lengths, continuous=cont, return_stats=True)
        wall = time.perf_counter() - t0
        assert [c.num_tokens for c in out] == lengths.tolist()
        res[name] = (int(lengths.sum()) / wall, wall, st, [c.token_ids for c in out])
    same = res["continuous"][3] == res["static"][3]
    return res, same, int(lengths.sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rrm-jax bench generate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b", help="preset / TOML (random init)")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-transformers", action="store_true", help="skip the torch reference")
    ap.add_argument("--no-tunix", action="store_true", help="skip Tunix's sampler")
    ap.add_argument("--bandwidth-mb", type=int, default=1024)
    ap.add_argument("--tail-model", default="qwen2.5-0.5b")
    ap.add_argument("--tail-requests", type=int, default=64)
    ap.add_argument("--tail-short", type=int, default=16, help="typical generation length (longs are 8x)")
    ap.add_argument("--tail-prompt", type=int, default=8)
    ap.add_argument("--tail-slots", type=int, default=16)
    ap.add_argument("--skip-tail", action="store_true")
    ap.add_argument("--skip-main", action="store_true")
    args = ap.parse_args(argv)

    from rrm_jax.core import api
    from rrm_jax.core.sharding import make_mesh

    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; model {args.model} fp32 (random init)")
    if not args.skip_main:
        model = api.init(args.model, seed=0, mesh=mesh, dtype=jnp.float32)
        wbytes = weight_bytes_per_step(model)
        hf = None
        if not args.no_transformers:
            import torch
            from transformers import AutoModelForCausalLM

            with tempfile.TemporaryDirectory() as d:
                api.save_hf(model, d)
                hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
            print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(
            f"weights {wbytes / 1e9:.2f} GB streamed per decode step; raw read bandwidth = jitted sum over "
            f"{args.bandwidth_mb} MiB, measured before and after each timed run"
        )
        from rrm_jax.benchmarks import tunix_ref

        no_tunix = "Tunix skipped (--no-tunix)" if args.no_tunix else tunix_ref.available()
        if no_tunix:
            print(no_tunix)
        rng = np.random.default_rng(0)
        for b in args.batch:
            prompts = _prompts(rng, b, args.prompt, model.config.vocab_size)
            ours = bench_ours(model, prompts, args.new, args.repeats, args.bandwidth_mb << 20)
            c = model.config  # every step also reads the K/V cache (compute dtype) up to the prompt + new tokens
            kv_bytes = (
                2
                * c.num_layers
                * b
                * (args.prompt + args.new)
                * c.num_kv_heads
                * c.head_dim
                * jnp.dtype(model.param_dtype).itemsize
            )
            bound_ms = 1e3 * (wbytes + kv_bytes) / ours["bandwidth"]
            floor_ms = matmul_floor_ms(model, b)
            line = (
                f"B={b} T={args.prompt} new={args.new} | rrm-jax: prefill {ours['prefill_tok_s']:.0f} tok/s, "
                f"decode {ours['decode_tok_s']:.1f} tok/s ({ours['step_ms']:.0f} ms/step; bandwidth "
                f"{ours['bandwidth'] / 1e9:.1f} GB/s -> bound {bound_ms:.0f} ms/step: {bound_ms / ours['step_ms']:.0%} "
                f"of it; the bare weight matmuls take {floor_ms:.0f} ms here: {floor_ms / ours['step_ms']:.0%} of it), "
                f"end-to-end {ours['e2e_tok_s']:.1f} tok/s"
            )
            print(line, flush=True)
            if hf is not None:
                ref = bench_transformers(hf, prompts, args.new, args.repeats)
                agree = np.mean([a == r for a, r in zip(ours["tokens"], ref["tokens"])])
                print(
                    f"B={b} | transformers: prefill {ref['prefill_tok_s']:.0f} tok/s, decode {ref['decode_tok_s']:.1f} tok/s "
                    f"({ref['step_ms']:.0f} ms/step), end-to-end {ref['e2e_tok_s']:.1f} tok/s"
                )
                print(
                    f"B={b} | ratio rrm-jax/transformers: prefill {ours['prefill_tok_s'] / ref['prefill_tok_s']:.2f}x, "
                    f"decode {ours['decode_tok_s'] / ref['decode_tok_s']:.2f}x (target >= 2x), "
                    f"end-to-end {ours['e2e_tok_s'] / ref['e2e_tok_s']:.2f}x; identical greedy rows {agree:.0%}",
                    flush=True,
                )
            if not no_tunix:
                tx = tunix_ref.bench_tunix(model, prompts, args.new, args.repeats)
                agree = np.mean([a == r for a, r in zip(ours["tokens"], tx["tokens"])])
                print(
                    f"B={b} | tunix: prefill {tx['prefill_tok_s']:.0f} tok/s, decode {tx['decode_tok_s']:.1f} tok/s "
                    f"({tx['step_ms']:.0f} ms/step), end-to-end {tx['e2e_tok_s']:.1f} tok/s"
                )
                print(
                    f"B={b} | ratio rrm-jax/tunix: prefill {ours['prefill_tok_s'] / tx['prefill_tok_s']:.2f}x, "
                    f"decode {ours['decode_tok_s'] / tx['decode_tok_s']:.2f}x, "
                    f"end-to-end {ours['e2e_tok_s'] / tx['e2e_tok_s']:.2f}x (target >= 1.5x); "
                    f"identical greedy rows {agree:.0%}",
                    flush=True,
                )
                del tx
                gc.collect()
        del model, hf
        gc.collect()
    if not args.skip_tail:
        tmodel = api.init(args.tail_model, seed=0, mesh=mesh, dtype=jnp.float32)
        res, same, total = long_tail(tmodel, args)
        c, s = res["continuous"], res["static"]
        print(
            f"long tail ({args.tail_model}, {args.tail_requests} requests, {total} tokens, {args.tail_slots} slots): "
            f"continuous {c[0]:.1f} tok/s ({c[1]:.1f} s, {c[2].decode_steps} steps, {c[2].prefill_calls} prefills) vs "
            f"static {s[0]:.1f} tok/s ({s[1]:.1f} s, {s[2].decode_steps} steps, {s[2].prefill_calls} prefills): "
            f"{c[0] / s[0]:.2f}x (target >= 1.8x); same tokens: {same}"
        )
    return 0
