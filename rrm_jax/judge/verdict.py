"""The result of one pairwise judgement (possibly several votes)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Verdict:
    """One comparison of responses `a` and `b` (in the order passed to `Judge.compare`).

    Every count is expressed in the caller's frame: votes are attributed to `a`/`b` after undoing any
    position swap, and `soft` is P(a better).
    """

    winner: int | None  # 0 -> `a`, 1 -> `b`, None -> no valid verdict (tie of votes or all invalid)
    votes_a: int
    votes_b: int
    invalid: int  # samples with no parseable verdict
    soft: float  # P(a better) in [0, 1]; 0.5 when nothing is known
    reasonings: list[str] = dataclasses.field(default_factory=list)
    orders: list[str] = dataclasses.field(default_factory=list)  # per sample "ab" or "ba" as shown to the model
    tokens: int = 0  # generated tokens spent on this comparison
    samples_drawn: int = 0  # votes actually sampled (adaptive voting may stop early)
    forced: int = 0  # samples whose verdict the thinking budget forced
    truncated: bool = False  # a response was shortened to fit `max_prompt_tokens`
    # Per-sample verdicts in the caller's frame (0 -> a, 1 -> b, None -> invalid); aligned with reasonings/orders.
    sample_verdicts: list[int | None] = dataclasses.field(default_factory=list)

    def score(self) -> float:
        """Accuracy credit when `a` is the gold response: 1, 0, or 0.5 for no verdict."""
        if self.winner == 0:
            return 1.0
        if self.winner == 1:
            return 0.0
        return 0.5

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def votes_valid(self) -> int:
        return self.votes_a + self.votes_b


def majority(votes_a: int, votes_b: int) -> int | None:
    """0 when `a` has more votes, 1 when `b` has, None on a tie (including 0-0)."""
    if votes_a > votes_b:
        return 0
    if votes_b > votes_a:
        return 1
    return None
