"""Rewards from a frozen RRM judge, for training a *policy* on plain queries (no labels, no checker).

A rollout batch holds G responses per query (prompt-major). :class:`JudgeReward` ranks each group with the judge
and turns the result into one reward per response:

- ``judge_elo``: a round-robin inside the group, Bradley-Terry ratings, standardised per group;
- ``judge_knockout``: a knockout bracket inside the group; the reward is the rounds a response survived
  (a bye counts, the champion gets one more);
- ``judge_reference``: each response against the query's ``reference`` answer: +1 when the judge prefers it,
  -1 otherwise.

Every group of a step is played in lockstep (:meth:`rrm_jax.judge.Judge.rank_many`), so each tournament round
of the whole step is one ``compare_many``: one sampler batch with continuous batching, a comparison's votes
sharing one prefill. Identical responses inside a group are judged once and share the reward (a policy that
has converged on an answer writes it many times; judging a response against itself says nothing).

What the judge is shown (``show``): ``response``, the text after the last ``</think>`` (a reasoning policy's
answer without its scratch work; the whole text when there is none), or ``answer``, the final answer pulled out
by an extractor (:mod:`rrm_jax.data.answers`) from that text. A response with nothing to show (no extractable
answer, an empty reply) is never sent to the judge and gets the group's lowest reward minus one.

The judge model is an ordinary :class:`~rrm_jax.core.api.Model` on the policy's mesh with its own sharding;
nothing is copied to the host. ``last_stats`` reports the judge's seconds, tokens and comparisons per step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from rrm_jax.core.seeds import derive_seed
from rrm_jax.data.answers import EXTRACTORS
from rrm_jax.judge.judge import Judge
from rrm_jax.training.config import JUDGE_REWARDS as KINDS
from rrm_jax.training.config import JUDGE_SHOW as SHOW


def after_think(text: str) -> str:
    """The part of a reasoning model's output after its last ``</think>`` (all of it when there is none)."""
    cut = text.rfind("</think>")
    return (text[cut + len("</think>") :] if cut >= 0 else text).strip()


class JudgeReward:
    """``(prompts, completions, batch) -> rewards`` from a judge; ``batch`` carries ``query`` and ``group`` per
    completion, ``step`` (seeds this step's tournaments, so a resumed run judges exactly as the uninterrupted one),
    and for ``judge_reference`` the per-completion ``reference``."""

    def __init__(
        self,
        judge: Judge,
        kind: str = "judge_elo",
        *,
        votes: int = 1,
        show: str = "response",
        extract: str = "",
        seed: int = 0,
    ):
        if kind not in KINDS:
            raise ValueError(f"judge reward must be one of {', '.join(KINDS)}, got {kind!r}")
        if show not in SHOW:
            raise ValueError(f"show must be one of {', '.join(SHOW)}, got {show!r}")
        if show == "answer" and extract not in EXTRACTORS:
            raise ValueError(f"show = 'answer' needs extract = one of {', '.join(EXTRACTORS)}, got {extract!r}")
        if votes < 1:
            raise ValueError(f"votes must be >= 1, got {votes}")
        self.judge, self.kind, self.votes, self.show, self.seed = judge, kind, votes, show, seed
        self.extract = EXTRACTORS.get(extract)
        self.last_stats: dict[str, float] = {}

    def shown(self, text: str) -> str | None:
        """What the judge sees of one response; None when there is nothing to judge."""
        shown = after_think(
            text
        )  # a reasoning policy's answer follows its thinking (a boxed draft inside is no answer)
        out = self.extract(shown) if self.show == "answer" else shown
        return out if out else None

    def __call__(self, prompts: Sequence, completions: Sequence, batch: dict) -> np.ndarray:
        t0 = time.perf_counter()
        groups = np.asarray(batch["group"])
        queries = batch["query"]
        shown = [self.shown(c.text) for c in completions]
        members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
        # per group: the distinct texts to judge, and each member's index into them (-1: nothing to show)
        uniq, where = [], []
        for idx in members:
            texts = list(dict.fromkeys(shown[i] for i in idx if shown[i] is not None))
            uniq.append(texts)
            where.append(np.array([texts.index(shown[i]) if shown[i] is not None else -1 for i in idx]))
        seed = derive_seed(self.seed, int(batch.get("step", 0)), 0x7D)
        first = [queries[idx[0]] for idx in members]
        if self.kind == "judge_reference":
            scores, cost = self._against_reference(first, uniq, [batch["reference"][idx[0]] for idx in members], seed)
        else:
            scores, cost = self._tournaments(first, uniq, seed)
        rewards = np.zeros(len(completions), np.float32)
        for idx, w, s in zip(members, where, scores):
            valid = w >= 0
            r = np.zeros(len(idx), np.float64)
            r[valid] = s[w[valid]] if len(s) else 0.0
            if self.kind == "judge_elo" and valid.any():
                v = r[valid]
                r[valid] = (v - v.mean()) / v.std() if v.std() > 1e-9 else 0.0
            r[~valid] = (r[valid].min() if valid.any() else 0.0) - 1.0
            rewards[idx] = r
        self.last_stats = dict(
            judge_seconds=time.perf_counter() - t0,
            judge_tokens=float(cost["tokens"]),
            judge_comparisons=float(cost["comparisons"]),
            judge_distinct=float(np.mean([len(u) for u in uniq])),
        )
        return rewards

    def of_groups(self, groups: Sequence[tuple[str, Sequence[str], str | None]], step: int = 0) -> list[list[float]]:
        """Rewards of plain texts grouped as ``(query, responses, reference or None)``: what a caller outside a
        rollout (a reward server, another RL stack) passes; ``step`` seeds the tournaments as a training step."""
        texts, batch = [], {"query": [], "group": [], "reference": [], "step": step}
        for g, (query, responses, reference) in enumerate(groups):
            texts += [_Text(t) for t in responses]
            batch["query"] += [query] * len(responses)
            batch["group"] += [g] * len(responses)
            batch["reference"] += [reference] * len(responses)
        flat = self(None, texts, batch)
        bounds = np.cumsum([0] + [len(r) for _, r, _ in groups])
        return [[float(x) for x in flat[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]

    def _tournaments(self, queries, uniq, seed):
        strategy = "elo" if self.kind == "judge_elo" else "knockout"
        # a group with one distinct response plays no match: its members tie
        play = [k for k, u in enumerate(uniq) if len(u) > 1]
        ranks = self.judge.rank_many(
            [queries[k] for k in play], [uniq[k] for k in play], strategy=strategy, votes=self.votes, seed=seed
        )
        scores = [np.zeros(len(u)) for u in uniq]
        for k, r in zip(play, ranks):
            scores[k] = np.asarray(r.ratings if strategy == "elo" else r.reached, np.float64)
        return scores, dict(tokens=sum(r.tokens for r in ranks), comparisons=sum(r.comparisons for r in ranks))

    def _against_reference(self, queries, uniq, references, seed):
        items = [(q, t, ref) for q, u, ref in zip(queries, uniq, references) for t in u]
        verdicts = self.judge.compare_many(items, votes=self.votes, seed=seed) if items else []
        scores, at = [], 0
        for u in uniq:
            vs = verdicts[at : at + len(u)]
            at += len(u)
            # winner 0: the response beat the reference; no majority: the soft score decides
            scores.append(
                np.array([1.0 if (v.winner == 0 if v.winner is not None else v.soft > 0.5) else -1.0 for v in vs])
            )
        return scores, dict(tokens=sum(v.tokens for v in verdicts), comparisons=len(items))


@dataclasses.dataclass(frozen=True)
class _Text:
    """What :class:`JudgeReward` reads of a completion: its text."""

    text: str


def from_config(cfg, policy) -> JudgeReward:
    """The reward a recipe's ``[judge]`` section describes, its judge loaded onto the policy's mesh (in the
    policy's compute dtype: the judge only decodes). A preset judge without its own tokenizer shares the
    policy's."""
    import jax.numpy as jnp

    from rrm_jax.core.api import load_or_init
    from rrm_jax.core.tokenizers import load_tokenizer

    j = cfg.judge
    tok = load_tokenizer(j.tokenizer) if j.tokenizer else None
    cdt = jnp.dtype(cfg.compute_dtype)
    model = load_or_init(
        j.model,
        seed=cfg.seed,
        mesh=policy.mesh,
        dtype=cdt,
        compute_dtype=cdt,
        tokenizer=tok,
        attention_impl=cfg.attention,
    )
    if model.tokenizer is None:
        model = dataclasses.replace(model, tokenizer=policy.tokenizer)
    judge = Judge(model, prompt=j.prompt, sampling=j.sampling, max_prompt_tokens=j.max_prompt_tokens or None)
    return JudgeReward(judge, cfg.grpo.reward, votes=j.votes, show=j.show, extract=j.extract, seed=cfg.seed)
