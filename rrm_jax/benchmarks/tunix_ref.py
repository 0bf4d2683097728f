"""Tunix's sampler on our weights, for `rrm-jax bench generate` (the ``[bench]`` extra installs google-tunix).

Tunix's Qwen2 keeps the same per-layer layouts as ours (q/k/v ``[D, N, hd]``, o ``[N, hd, D]``, MLP kernels
``[in, out]``, embedding ``[V, D]``); only the stacking differs (one module per layer) and its q/k/v biases are
flat ``[N*hd]``. So the mapping below is slices and reshapes, no transposes, and Tunix runs exactly our model.
Token ids go in as text through a tiny tokenizer that reads them back, so Tunix's own prompt padding, prefill,
``while_loop`` decode and output handling all run as they would for a user.
"""

from __future__ import annotations

import time

import numpy as np

from rrm_jax.benchmarks import rates


def available() -> str | None:
    """None when Tunix can be imported, else why not (printed by the benchmark instead of its figures)."""
    try:
        import tunix  # noqa: F401
        from tunix.generate import sampler  # noqa: F401
        from tunix.models.qwen2 import model  # noqa: F401
    except Exception as e:  # ImportError, or a Tunix built for another jax
        return f"Tunix not timed ({type(e).__name__}: {e}); install the [bench] extra (google-tunix) to add it"
    return None


class _IdTokenizer:
    """Text of space-separated token ids <-> ids: the prompts are already tokenised."""

    def encode(self, text: str, **_) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids, **_) -> str:
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self):
        return None  # Tunix prepends no BOS when this is falsy

    def eos_id(self) -> int:
        return -1

    def pad_id(self) -> int:
        return 0  # the benchmark's prompt ids start at 10


def tunix_model(model):
    """Our model's weights in Tunix's Qwen2 (the arrays are ours or per-layer slices of them)."""
    import jax.numpy as jnp
    from flax import nnx
    from tunix.models.qwen2 import model as tq

    from rrm_jax.core.api import params_dict

    c = model.config
    dtype = model.param_dtype
    tcfg = tq.ModelConfig(
        num_layers=c.num_layers,
        vocab_size=c.vocab_size,
        embed_dim=c.hidden_size,
        hidden_dim=c.intermediate_size,
        num_heads=c.num_heads,
        head_dim=c.head_dim,
        num_kv_heads=c.num_kv_heads,
        rope_theta=c.rope_theta,
        norm_eps=c.rms_norm_eps,
        use_tied_embedding=c.tie_word_embeddings,
        dtype=dtype,
        param_dtype=dtype,
    )
    tm = nnx.eval_shape(lambda: tq.Qwen2(tcfg, rngs=nnx.Rngs(0)))  # no allocation: every value is set below
    p = params_dict(model)
    tm.embedder.input_embedding.value = p["embed"]
    tm.final_norm.w.value = p["final_norm"]
    if not c.tie_word_embeddings:
        tm.lm_head.w.value = p["lm_head"]
    for i, layer in enumerate(tm.layers):
        layer.input_layernorm.w.value = p["attn_norm"][i]
        layer.post_attention_layernorm.w.value = p["mlp_norm"][i]
        for name in ("q", "k", "v"):
            getattr(layer.attn, f"{name}_proj").w.value = p[f"{name}_proj"][i]
            bias = (
                p[f"{name}_bias"][i].reshape(-1)
                if c.qkv_bias
                else jnp.zeros(getattr(layer.attn, f"{name}_bias").value.shape, dtype)
            )
            getattr(layer.attn, f"{name}_bias").value = bias
        layer.attn.o_proj.w.value = p["o_proj"][i]
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(layer.mlp, name).kernel.value = p[name][i]
    return tm


def bench_tunix(model, prompts: list[list[int]], new_tokens: int, repeats: int) -> dict:
    """Greedy ``new_tokens`` for every prompt with Tunix's vanilla ``Sampler``; timed like transformers
    (prefill = a one-token call, decode = the rest), each after a warm call of the same shape."""
    from tunix.generate import sampler as ts

    c = model.config
    t = len(prompts[0])
    smp = ts.Sampler(
        tunix_model(model),
        _IdTokenizer(),
        ts.CacheConfig(
            cache_size=t + new_tokens, num_layers=c.num_layers, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim
        ),
    )
    texts = [" ".join(map(str, p)) for p in prompts]

    def run(n):
        t0 = time.perf_counter()
        out = smp(texts, max_generation_steps=n, max_prompt_length=t, eos_tokens=[-1], temperature=0.0)
        return time.perf_counter() - t0, out

    run(1), run(new_tokens)  # compile both shapes
    pre = min(run(1)[0] for _ in range(repeats))
    total, out = min((run(new_tokens) for _ in range(repeats)), key=lambda r: r[0])
    return {**rates(len(prompts), t, new_tokens, pre, total), "tokens": [np.asarray(x).tolist() for x in out.tokens]}
