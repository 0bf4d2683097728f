"""Sigmoid DPO (Rafailov et al.): the loss on sequence log-probs of chosen/rejected completions, its pair weights
and the row layout a DPO batch uses.

A DPO batch of ``P`` pair slots has ``2P`` rows: rows ``[0, P)`` hold the chosen completions and rows ``[P, 2P)``
the rejected ones, pair ``i`` being rows ``i`` and ``P + i``. The train step splits a batch into ``k``
micro-batches by taking every k-th row (``step._split``); with ``P % k == 0`` micro-batch ``j`` holds rows
``j, j+k, ...`` of each half, so it is again ``[chosen..., rejected...]`` with each pair in one micro-batch.

Like every loss of ``rl.loss``, the value is a weighted sum (weight ``1 / real pairs`` per pair, 0 for an empty
padding slot), so micro-batch losses add up to the full-batch mean.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1  # inverse temperature of the implicit reward beta * log(pi / ref)
    label_smoothing: float = 0.0  # conservative DPO: the share of labels assumed flipped (0 = plain DPO)


def sequence_sums(token_logp: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """[B, T] per-token log-probs -> [B] log-prob of each completion (its loss-masked tokens)."""
    return jnp.sum(token_logp * loss_mask.astype(token_logp.dtype), axis=1)


def pair_weights(loss_mask: jax.Array) -> jax.Array:
    """[2P] row weights: ``1 / (real pairs)`` on both rows of a pair whose chosen row has loss tokens, else 0.

    Computed from the WHOLE batch before it is split, so a micro-batch's weighted sum is its share of the mean."""
    p = loss_mask.shape[0] // 2
    real = jnp.any(loss_mask[:p], axis=1).astype(jnp.float32)
    w = real / jnp.maximum(real.sum(), 1.0)
    return jnp.concatenate([w, w])


def dpo_loss(
    seq_logp: jax.Array, ref_seq_logp: jax.Array, weights: jax.Array, beta: float, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """The sigmoid DPO loss of rows laid out ``[chosen..., rejected...]`` and its metrics, as weighted sums.

    ``m = (logp_c - logp_r) - (ref_c - ref_r)``;
    ``loss = -sum_i w_i ((1 - ls) log sigmoid(beta m_i) + ls log sigmoid(-beta m_i))``.
    ``weights`` [2P] are per row (only the chosen half is read). Metrics: reward_margin (beta m), reward_accuracy
    (m > 0), chosen_reward / rejected_reward (beta (logp - ref) of each side), logp_chosen / logp_rejected.
    """
    p = seq_logp.shape[0] // 2
    pc, pr = seq_logp[:p], seq_logp[p:]
    rc, rr = ref_seq_logp[:p], ref_seq_logp[p:]
    w = weights[:p]
    m = (pc - pr) - (rc - rr)
    z = beta * m
    per_pair = -((1.0 - label_smoothing) * jax.nn.log_sigmoid(z) + label_smoothing * jax.nn.log_sigmoid(-z))
    loss = jnp.sum(w * per_pair)
    metrics = dict(
        dpo_loss=loss,
        reward_margin=jnp.sum(w * z),
        reward_accuracy=jnp.sum(w * (m > 0).astype(jnp.float32)),
        chosen_reward=jnp.sum(w * beta * (pc - rc)),
        rejected_reward=jnp.sum(w * beta * (pr - rr)),
        logp_chosen=jnp.sum(w * pc),
        logp_rejected=jnp.sum(w * pr),
    )
    return loss, metrics
