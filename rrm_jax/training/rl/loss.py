"""GRPO / SFT losses on per-token log-probs, and the chunked log-prob computation that feeds them.

Every loss here is a weighted token sum ``sum(w[b, t] * l[b, t])``: the aggregation mode only decides the
weights, which :func:`token_weights` computes from the WHOLE batch's loss mask before the batch is split
into micro-batches. Summing micro-batch losses then equals the full-batch loss exactly, whatever the mode
(gradient accumulation needs no per-mode bookkeeping). Metrics are token means computed the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    eps_low: float = 0.2  # ratio clipped below at 1 - eps_low
    eps_high: float = 0.2  # ... and above at 1 + eps_high (DAPO's "clip-higher" when > eps_low)
    beta: float = 0.0  # k3 KL-to-reference coefficient; 0 skips the reference pass entirely
    aggregation: str = "seq-mean-token-mean"
    norm_length: int = 0  # Dr.GRPO's constant divisor; 0 -> the padded completion length of the batch
    logprob_chunk: int = 256  # sequence chunk for log-probs (bounds the [B, chunk, V] float32 logits)

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown loss aggregation {self.aggregation!r}; choose one of {AGGREGATIONS}")
        if self.eps_low < 0 or self.eps_high < 0 or self.beta < 0:
            raise ValueError("eps_low, eps_high and beta must be >= 0")
        if self.logprob_chunk < 1:
            raise ValueError("logprob_chunk must be >= 1")


# ------------------------------------------------------------------------------------------ weights
def token_weights(mask: jax.Array, aggregation: str, norm_length: int = 0) -> jax.Array:
    """[B, T] weights whose weighted token sum realises ``aggregation`` over the batch.

    Rows with no loss tokens (batch padding) get weight 0 and do not count as sequences.
    """
    m = mask.astype(jnp.float32)
    per_seq = m.sum(axis=1, keepdims=True)
    n_seq = jnp.maximum((per_seq > 0).sum(), 1).astype(jnp.float32)
    if aggregation == "token-mean":
        return m / jnp.maximum(m.sum(), 1.0)
    if aggregation == "seq-mean-token-mean":
        return m / jnp.maximum(per_seq, 1.0) / n_seq
    if aggregation == "seq-mean-token-sum-norm":
        length = norm_length if norm_length > 0 else mask.shape[1]
        return m / float(length) / n_seq
    raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {AGGREGATIONS}")


def mean_weights(mask: jax.Array) -> jax.Array:
    """Token-mean weights (for metrics)."""
    return token_weights(mask, "token-mean")


# ------------------------------------------------------------------------------------------ log-probs
def chunked_logprobs(module, hidden: jax.Array, targets: jax.Array, chunk: int = 256, layout=None):
    """Log-prob of ``targets`` and the entropy of the next-token distribution, [B, T] float32 each.

    ``hidden`` [B, T, D] are the model's final-normed hidden states. The vocabulary projection runs over
    chunks of the sequence under ``jax.checkpoint``, so neither the forward nor the backward pass ever
    holds more than one [B, chunk, V] float32 logits block (the backward recomputes it per chunk).
    ``layout`` (a :class:`~rrm_jax.core.sharding.LogitSharding`, on a mesh) splits each block's vocabulary.
    """
    b, t, d = hidden.shape
    c = max(1, min(chunk, t))
    n = -(-t // c)
    pad = n * c - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(b, n, c, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, c).swapaxes(0, 1)
    vocab = module.cfg.vocab_size
    # Split, the head is laid out once, outside the chunks. Whole, it stays inside each chunk's checkpoint: hoisted,
    # the 0.5B train step (a tied head) took 11.1-11.7 s against 10.4-10.6 (`rrm-jax bench train --seq 512 --batch 2
    # --repeats 4`, two runs each).
    head = None if layout is None else layout.head(module.head_weight())

    @jax.checkpoint
    def one(args):
        h, tgt = args
        if layout is not None:
            h = layout.hidden(h, vocab)
        # cast per chunk: the head's gradient then sums over chunks in its own (float32) dtype
        z = module.logits_from_hidden(h, None if head is None else head.astype(module.compute_dtype))
        if layout is not None:
            z = layout.logits(z)
        lse = jax.nn.logsumexp(z, axis=-1)
        if layout is None:
            picked = jnp.take_along_axis(z, tgt[..., None], axis=-1)[..., 0]
        else:  # a masked sum: over a split vocabulary a gather would assemble the whole block first
            picked = jnp.sum(jnp.where(jnp.arange(vocab) == tgt[..., None], z, 0.0), axis=-1)
        ent = lse - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)
        return picked - lse, ent

    lp, ent = jax.lax.map(one, (hs, ts))
    lp = lp.swapaxes(0, 1).reshape(b, n * c)[:, :t]
    ent = ent.swapaxes(0, 1).reshape(b, n * c)[:, :t]
    return lp, ent


def sequence_logprobs(module, tokens, positions, mask, targets, chunk: int = 256, layer_grads=None, layout=None):
    """Forward a padded batch and return (log-probs of targets, entropies), both [B, T]. ``layer_grads``: the
    model's gradient sink (see ``Qwen2.__call__``); ``layout``: see :func:`chunked_logprobs`."""
    hidden, _ = module(tokens, positions, mask, return_hidden=True, layer_grads=layer_grads)
    return chunked_logprobs(module, hidden, targets, chunk, layout)


# ------------------------------------------------------------------------------------------ losses
def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp (>= 0)."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, weights, metric_weights, cfg: LossConfig):
    """Clipped-ratio policy loss (+ beta * k3 KL) as a weighted token sum, and token-mean metrics.

    logp/old_logp/ref_logp/mask/weights/metric_weights: [B, T]; advantages: [B] (one per completion)
    or [B, T]. ``ref_logp`` is ignored when ``cfg.beta == 0``. Returns (loss, metrics) where each metric
    is a weighted sum, so micro-batch values add up to the full-batch value.
    """
    m = mask.astype(jnp.float32)
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * clipped_ratio
    pg = jnp.maximum(pg_unclipped, pg_clipped)
    per_token = pg
    metrics = {}
    if cfg.beta > 0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + cfg.beta * kl
        metrics["kl"] = jnp.sum(metric_weights * kl * m)
    loss = jnp.sum(weights * per_token * m)
    clipped = (pg_clipped > pg_unclipped).astype(jnp.float32)
    metrics.update(
        pg_loss=jnp.sum(weights * pg * m),
        clip_frac=jnp.sum(metric_weights * clipped * m),
        clip_frac_low=jnp.sum(metric_weights * clipped * (ratio < 1.0 - cfg.eps_low) * m),
        clip_frac_high=jnp.sum(metric_weights * clipped * (ratio > 1.0 + cfg.eps_high) * m),
        ratio_mean=jnp.sum(metric_weights * ratio * m),
        # k3 of the old policy w.r.t. the current one: how far the inner iterations have moved.
        approx_kl_old=jnp.sum(metric_weights * k3_kl(logp, old_logp) * m),
    )
    return loss, metrics


def sft_loss(logp, mask, weights, metric_weights):
    """Token cross-entropy (negative log-likelihood) on the masked tokens, as a weighted sum."""
    m = mask.astype(jnp.float32)
    nll = -logp
    return jnp.sum(weights * nll * m), {"nll": jnp.sum(metric_weights * nll * m)}
