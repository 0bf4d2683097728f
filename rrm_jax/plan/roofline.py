"""Closed-form FLOPs and HBM bytes per program, for the roofline.

XLA's ``cost_analysis()`` counts a loop body once (measured: halving the micro-batch count of the same batch
doubles the update's reported FLOPs), and every program here is loops (the layer scan, micro-batches, the
decode while-loop), so its figures are kept in the report as XLA gives them and the time estimate uses these
counts instead: matmul FLOPs 2 per weight per token, attention ``4 * layers * heads * head_dim * context``
per token, and bytes for the weights and caches each call must read at least once.
"""

from __future__ import annotations

from rrm_jax.core.config import ModelConfig
from rrm_jax.core.model import RECOMPUTES_LAYERS


def matmul_params(cfg: ModelConfig) -> tuple[int, int]:
    """(weights in the layers' matmuls, weights of the LM head): what costs 2 FLOPs per token each."""
    d, f, h, k, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return cfg.num_layers * (d * h * hd * 2 + d * k * hd * 2 + 3 * d * f), cfg.vocab_size * d


def forward_flops(cfg: ModelConfig, tokens: int, context: float, head_tokens: int | None = None) -> float:
    """Forward FLOPs for ``tokens`` tokens attending over ``context`` keys on average (``head_tokens``: how
    many of them go through the LM head; all by default)."""
    layers, head = matmul_params(cfg)
    attn = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context
    return tokens * (2 * layers + attn) + 2 * head * (tokens if head_tokens is None else head_tokens)


def program_cost(
    name: str,
    cfg: ModelConfig,
    shapes: dict,
    *,
    remat: str,
    attention: str = "xla",
    param_bytes: int,
    compute_bytes: int,
    state_bytes: int,
    kv_bytes: int,
    chips: int,
) -> tuple[float, float]:
    """(FLOPs, HBM bytes) per chip per call. ``param_bytes``/``compute_bytes``: the whole model in its
    master/compute dtype; ``state_bytes`` the train state, ``kv_bytes`` a KV cache, all per chip; ``attention``
    the form compiled (under ``remat = "offload"`` splash's forward is not recomputed: core.grad_sink)."""
    if name.endswith("update"):
        rows, t = shapes["rows"], shapes["row_tokens"]
        passes = 4 if remat in RECOMPUTES_LAYERS else 3  # forward + backward (2x); + the recomputed forward
        flops = passes * forward_flops(cfg, rows * t, t / 2)
        if remat == "offload" and attention == "splash":  # the recompute takes the kernel's saved outputs
            flops -= forward_flops(cfg, rows * t, t / 2) - forward_flops(cfg, rows * t, 0)
        # each micro-batch reads the weights for its forward, recompute and backward; the optimizer
        # reads and writes the whole train state once
        reads = shapes["micro_batches"] * passes * compute_bytes / chips + 2 * state_bytes
        return flops / chips, reads
    if name == "log-probs":
        rows, t = shapes["rows"], shapes["row_tokens"]
        return forward_flops(cfg, rows * t, t / 2) / chips, param_bytes / chips
    if name.endswith("prefill"):
        # one chunk call: rows x chunk tokens attending over half the prompt on average
        rows, c, t = shapes["prefill_rows"], shapes["prefill_chunk"], shapes["prompt_bucket"]
        return forward_flops(cfg, rows * c, t / 2, head_tokens=rows) / chips, compute_bytes / chips + kv_bytes
    if name.endswith("decode"):  # one step: every slot reads the weights' share and its whole cache
        return forward_flops(cfg, shapes["slots"], shapes["cache_len"]) / chips, compute_bytes / chips + kv_bytes
    raise ValueError(f"no cost model for program {name!r}")
