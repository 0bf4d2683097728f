"""The direct judge's verdict as a pure function of arrays, for JAX pipelines: ``(params, ids, mask) -> P(first)``.

:class:`DirectJudge` makes the model answer at once: the sampler emits the verdict suffix
(``... \\boxed{Assistant ``) after the prompt and reads the probabilities of the two digits at the next token, so its
``soft`` score is ``sigmoid(logit["1"] - logit["2"])`` after ``prompt + suffix``. :class:`DirectScore` computes
exactly that in one forward pass, with no sampler and no host work: it can be jitted, vmapped, differentiated or
run on sharded arrays inside someone else's program. :meth:`DirectScore.encode` builds the token arrays on the host
(the judge's own prompt, truncation and suffix).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class DirectScore:
    """``score(params, ids [B, T], mask [B, T]) -> [B]`` P(the response shown first is better); hashable, so a jit
    may take it as a static argument."""

    graphdef: Any
    digits: tuple[int, int]  # token ids of "1" and "2" after the suffix

    @classmethod
    def from_judge(cls, judge) -> DirectScore:
        return cls(judge.model.graphdef, tuple(int(d) for d in judge.digit_ids))

    def __call__(self, params, ids: jax.Array, mask: jax.Array) -> jax.Array:
        module = nnx.merge(self.graphdef, params)
        mask = mask.astype(bool)
        h, _ = module(ids, None, mask, None, return_hidden=True)
        # the last real token of each row, for right and left padding alike
        last = jnp.max(jnp.where(mask, jnp.arange(ids.shape[1])[None], -1), axis=1)
        logits = module.logits_from_hidden(h[jnp.arange(ids.shape[0]), jnp.maximum(last, 0)])
        return jax.nn.sigmoid(logits[:, self.digits[0]] - logits[:, self.digits[1]])

    @staticmethod
    def encode(
        judge, pairs: Sequence[tuple[str, str, str]], length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ``(ids, mask)`` of ``render(query, a, b) + suffix`` per pair, as the DirectJudge feeds them
        (``a`` shown first); ``length`` pads to a fixed width (one compiled shape), else to the longest."""
        rows = []
        for q, a, b in pairs:
            q, a, b, _ = judge.fit(q, a, b)
            rows.append(judge._encode(judge.render(q, a, b)) + list(judge.suffix_ids))
        width = length or max(len(r) for r in rows)
        if any(len(r) > width for r in rows):
            raise ValueError(f"a pair takes {max(len(r) for r in rows)} tokens, over length={width}")
        ids = np.zeros((len(rows), width), np.int32)
        mask = np.zeros((len(rows), width), bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, True
        return ids, mask
