"""Tiny architectures and batch helpers shared by the torch (hf_reference) and NumPy (numpy_reference) references."""

from __future__ import annotations

import numpy as np
import transformers

# Four tiny architectures that between them cover: tied/untied head, q/k/v bias on (Qwen2) and off (Llama), GQA group sizes 1, 2 and 7, rope_theta 1e4 and 1e6, head_dim 64 and 128.
TINY_CONFIGS = {
    "qwen2-tied-g1-hd64-1e4": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=64,
        rope_theta=1e4,
        tie_word_embeddings=True,
        vocab_size=256,
    ),
    "qwen2-untied-g2-hd128-1e6": dict(
        model_type="qwen2",
        hidden_size=96,
        intermediate_size=160,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=128,
        rope_theta=1e6,
        tie_word_embeddings=False,
        vocab_size=300,
    ),
    "llama-untied-nobias-g7-hd64-1e6": dict(
        model_type="llama",
        hidden_size=112,
        intermediate_size=192,
        num_attention_heads=7,
        num_key_value_heads=1,
        head_dim=64,
        rope_theta=1e6,
        tie_word_embeddings=False,
        attention_bias=False,
        vocab_size=320,
    ),
    "llama-tied-g7-hd128-1e4": dict(
        model_type="llama",
        hidden_size=112,
        intermediate_size=160,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=128,
        rope_theta=1e4,
        tie_word_embeddings=True,
        vocab_size=256,
    ),
}


def padded_batch(rows: list[np.ndarray], side: str, pad_id: int = 0):
    """Pad token rows to one length on the given side -> (ids, mask, positions = #real tokens before)."""
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad_id, np.int32)
    mask = np.zeros((len(rows), t), bool)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(t - len(r), t)
        ids[i, sl], mask[i, sl] = r, True
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return ids, mask, positions


def hf_config(model_type: str = "qwen2", num_hidden_layers: int = 2, **kw) -> transformers.PretrainedConfig:
    cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}[model_type]
    kw.setdefault("rms_norm_eps", 1e-6)
    return cls(num_hidden_layers=num_hidden_layers, **kw)
