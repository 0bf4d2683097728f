"""A second independent reference, with no torch: the Qwen2/Llama decoder re-derived in float64 NumPy from the
HF checkpoint layout (``[out, in]`` weights, HF tensor names, HF's rotate-half RoPE), plus a writer of random
checkpoints in that layout. It lets the parity tests run where torch is not installed (Python 3.12+)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.numpy


def random_checkpoint(path: Path, cfg: dict, num_layers: int = 2, seed: int = 0, std: float = 0.15) -> dict:
    """Write ``config.json`` + ``model.safetensors`` with random float32 weights; returns the weights."""
    rng = np.random.default_rng(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    h, k, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    bias = cfg["model_type"] == "qwen2"

    def mat(*shape):
        return (std * rng.standard_normal(shape)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((v, d)).astype(np.float32), "model.norm.weight": norm()}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        w |= {
            p + "input_layernorm.weight": norm(),
            p + "post_attention_layernorm.weight": norm(),
            p + "self_attn.q_proj.weight": mat(h * hd, d),
            p + "self_attn.k_proj.weight": mat(k * hd, d),
            p + "self_attn.v_proj.weight": mat(k * hd, d),
            p + "self_attn.o_proj.weight": mat(d, h * hd),
            p + "mlp.gate_proj.weight": mat(f, d),
            p + "mlp.up_proj.weight": mat(f, d),
            p + "mlp.down_proj.weight": mat(d, f),
        }
        if bias:
            w |= {
                p + "self_attn.q_proj.bias": mat(h * hd),
                p + "self_attn.k_proj.bias": mat(k * hd),
                p + "self_attn.v_proj.bias": mat(k * hd),
            }
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(v, d)
    path.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(w, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = {k_: v_ for k_, v_ in cfg.items() if k_ != "attention_bias"} | {
        "num_hidden_layers": num_layers,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "architectures": ["Qwen2ForCausalLM" if bias else "LlamaForCausalLM"],
    }
    (path / "config.json").write_text(json.dumps(config))
    return w


def _rms(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x, pos, theta):
    """HF's rotate-half RoPE: x [T, heads, hd], pos [T]."""
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.concatenate([pos[:, None] * inv[None]] * 2, axis=-1)[:, None, :]
    rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], axis=-1)
    return x * np.cos(ang) + rot * np.sin(ang)


def logits(w: dict, cfg: dict, ids, mask=None, positions=None) -> np.ndarray:
    """[B, T] ids -> [B, T, V] float64 logits; padding (``mask`` False) is never attended to."""
    w = {n: a.astype(np.float64) for n, a in w.items()}
    ids = np.asarray(ids)
    b, t = ids.shape
    mask = np.ones((b, t), bool) if mask is None else np.asarray(mask, bool)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0) if positions is None else np.asarray(positions)
    h, k, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    layers = 1 + max(int(n.split(".")[2]) for n in w if n.startswith("model.layers."))
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    out = np.zeros((b, t, head.shape[0]))
    for r in range(b):
        x = w["model.embed_tokens.weight"][ids[r]]
        allowed = np.tril(np.ones((t, t), bool)) & mask[r][None, :]
        for i in range(layers):
            p = f"model.layers.{i}."

            def proj(name, a):
                return a @ w[p + name + ".weight"].T + w.get(p + name + ".bias", 0.0)

            a = _rms(x, w[p + "input_layernorm.weight"])
            q = _rope(proj("self_attn.q_proj", a).reshape(t, h, hd), positions[r], cfg["rope_theta"])
            kk = _rope(proj("self_attn.k_proj", a).reshape(t, k, hd), positions[r], cfg["rope_theta"])
            vv = proj("self_attn.v_proj", a).reshape(t, k, hd)
            kk, vv = np.repeat(kk, h // k, axis=1), np.repeat(vv, h // k, axis=1)
            s = np.einsum("qhd,khd->hqk", q, kk) / np.sqrt(hd)
            s = np.where(allowed[None], s, -1e300)  # a padding query row (compared nowhere) stays finite
            s = np.exp(s - s.max(-1, keepdims=True))
            s = s / s.sum(-1, keepdims=True)
            x = x + proj("self_attn.o_proj", np.einsum("hqk,khd->qhd", s, vv).reshape(t, h * hd))
            m = _rms(x, w[p + "post_attention_layernorm.weight"])
            g = proj("mlp.gate_proj", m)
            x = x + proj("mlp.down_proj", g / (1 + np.exp(-g)) * proj("mlp.up_proj", m))
        out[r] = _rms(x, w["model.norm.weight"]) @ head.T
    return out
