"""The independent reference for model tests: transformers' torch Qwen2/Llama with random, scaled-up weights.

Weights are drawn N(0, std) with std well above HF's 0.02 init so logits span several units and a wrong
RoPE/GQA/bias/tie detail shows up as a large difference, not as noise around zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import transformers

# PyPI has CPU-only torch wheels for Python 3.11 here (the pinned torch==2.13.0 file) but only CUDA builds for
# newer Pythons on Linux x86_64: where torch is absent the tests that compare against it skip, saying why.
TORCH_MISSING = ("torch is not installed: the HF reference needs it (Python 3.11: pip install torch==2.13.0; "
                 "elsewhere a CPU-only build from PyTorch's own package index)")
torch = pytest.importorskip("torch", reason=TORCH_MISSING)

# Four tiny architectures that between them cover: tied/untied head, q/k/v bias on (Qwen2) and off (Llama), GQA group sizes 1, 2 and 7, rope_theta 1e4 and 1e6, head_dim 64 and 128.
TINY_CONFIGS = {
    "qwen2-tied-g1-hd64-1e4": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=4, head_dim=64, rope_theta=1e4, tie_word_embeddings=True,
                                   vocab_size=256),
    "qwen2-untied-g2-hd128-1e6": dict(model_type="qwen2", hidden_size=96, intermediate_size=160, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=128, rope_theta=1e6, tie_word_embeddings=False,
                                      vocab_size=300),
    "llama-untied-nobias-g7-hd64-1e6": dict(model_type="llama", hidden_size=112, intermediate_size=192,
                                            num_attention_heads=7, num_key_value_heads=1, head_dim=64, rope_theta=1e6,
                                            tie_word_embeddings=False, attention_bias=False, vocab_size=320),
    "llama-tied-g7-hd128-1e4": dict(model_type="llama", hidden_size=112, intermediate_size=160,
                                    num_attention_heads=14, num_key_value_heads=2, head_dim=128, rope_theta=1e4,
                                    tie_word_embeddings=True, vocab_size=256),
}


def hf_config(model_type: str = "qwen2", num_hidden_layers: int = 2, **kw) -> transformers.PretrainedConfig:
    cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}[model_type]
    kw.setdefault("rms_norm_eps", 1e-6)
    return cls(num_hidden_layers=num_hidden_layers, **kw)


def random_hf_model(config, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """A float32 HF causal LM with every weight redrawn: matrices and biases N(0, std), norms 1 + N(0, 0.1)."""
    config._attn_implementation = "eager"  # the plain softmax(QK^T)V reference
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))  # rms-normed right away; unit scale is natural
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def save(model, path: Path) -> Path:
    model.save_pretrained(str(path), safe_serialization=True)
    return Path(path)


def hf_logits(model, ids, mask=None, positions=None) -> np.ndarray:
    ids = torch.as_tensor(np.asarray(ids, np.int64))
    kw = {}
    if mask is not None:
        kw["attention_mask"] = torch.as_tensor(np.asarray(mask, np.int64))
    if positions is not None:
        kw["position_ids"] = torch.as_tensor(np.asarray(positions, np.int64))
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False, **kw).logits.float().numpy()


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
