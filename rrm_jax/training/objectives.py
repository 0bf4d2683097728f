"""The loss of each kind of update, as the train step computes it: its batch, its token weights, its loss.

An objective is a frozen dataclass of hyper-parameters, so it is also the jit cache key of its step. The step
(:func:`rrm_jax.training.step.make_train_step`) places ``keys`` of the batch, calls ``weights`` once on the
whole batch's loss mask (before the micro-batch split, see rl.loss) and ``loss`` on each micro-batch's per-token
log-probs; it knows nothing else of the objective. Which objective a recipe trains is decided in
:mod:`rrm_jax.training.modes`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NotRequired, TypedDict

import jax

from rrm_jax.training.rl.dpo import DPOConfig, dpo_loss, pair_weights, sequence_sums
from rrm_jax.training.rl.loss import LossConfig, grpo_loss, sft_loss, token_weights


class SFTBatch(TypedDict):
    """[B, T] arrays: the rows' tokens, positions, attention mask, next-token targets and which targets count."""

    tokens: jax.Array
    positions: jax.Array
    mask: jax.Array
    targets: jax.Array
    loss_mask: jax.Array


class GRPOBatch(SFTBatch):
    old_logp: jax.Array  # [B, T] the sampling policy's log-probs
    advantages: jax.Array  # [B]
    ref_logp: NotRequired[jax.Array]  # [B, T] the frozen reference's, when beta > 0


class DPOBatch(SFTBatch):
    """Rows [0, P) chosen, [P, 2P) rejected (rl.dpo)."""

    ref_logp: jax.Array  # [B, T] the frozen reference's log-probs


SFT_KEYS = tuple(SFTBatch.__annotations__)


@dataclasses.dataclass(frozen=True)
class SFT:
    """Token cross-entropy on the completions (token mean over the batch)."""

    chunk: int = 256  # sequence chunk of the log-prob pass (rl.loss.sequence_logprobs)
    keys: ClassVar[tuple[str, ...]] = SFT_KEYS

    def weights(self, loss_mask):
        return token_weights(loss_mask, "token-mean")

    def loss(self, logp, mb: SFTBatch):
        return sft_loss(logp, mb["loss_mask"], mb["w"], mb["mw"])


@dataclasses.dataclass(frozen=True)
class GRPO:
    """The clipped policy-gradient loss on group advantages, with a k3 KL to the reference when beta > 0."""

    cfg: LossConfig = LossConfig()

    @property
    def chunk(self) -> int:
        return self.cfg.logprob_chunk

    @property
    def keys(self) -> tuple[str, ...]:
        return SFT_KEYS + ("old_logp", "advantages") + (("ref_logp",) if self.cfg.beta > 0 else ())

    def weights(self, loss_mask):
        return token_weights(loss_mask, self.cfg.aggregation, self.cfg.norm_length)

    def loss(self, logp, mb: GRPOBatch):
        ref = mb.get("ref_logp", logp)
        return grpo_loss(logp, mb["old_logp"], ref, mb["advantages"], mb["loss_mask"], mb["w"], mb["mw"], self.cfg)


@dataclasses.dataclass(frozen=True)
class DPO:
    """Sigmoid DPO on the completions' sequence log-probs against the frozen reference's."""

    cfg: DPOConfig = DPOConfig()
    chunk: int = 256
    keys: ClassVar[tuple[str, ...]] = SFT_KEYS + ("ref_logp",)

    def weights(self, loss_mask):
        return pair_weights(loss_mask)

    def loss(self, logp, mb: DPOBatch):
        m = mb["loss_mask"]
        seq, ref = sequence_sums(logp, m), sequence_sums(mb["ref_logp"], m)
        return dpo_loss(seq, ref, mb["w"], self.cfg.beta, self.cfg.label_smoothing)


Objective = SFT | GRPO | DPO
