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
TORCH_MISSING = (
    "torch is not installed: the HF reference needs it (Python 3.11: pip install torch==2.13.0; "
    "elsewhere a CPU-only build from PyTorch's own package index)"
)
torch = pytest.importorskip("torch", reason=TORCH_MISSING)

from tiny_configs import TINY_CONFIGS, hf_config, padded_batch  # noqa: E402,F401  (shared, torch-free)


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
