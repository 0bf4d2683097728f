"""`Judge`: RRM pairwise judgements on top of the sampler - order randomisation, majority voting (optionally
adaptive), soft scores from the verdict token's probabilities, truncation of over-long inputs, tournaments.

Every comparison of a `compare_many` call goes through ONE `generate` call per voting round (continuous batching),
and a prompt's votes are the sampler's `n` samples sharing one prefill.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rrm_jax.core.seeds import derive_seed, show_first_b
from rrm_jax.judge import tournament
from rrm_jax.judge.parse import parse_verdict
from rrm_jax.judge.prompt import RRM_PROMPT_V1, JudgePrompt, get_prompt, render_prompt
from rrm_jax.judge.verdict import Verdict, majority
from rrm_jax.sampler import SamplingConfig
from rrm_jax.sampler import generate as sample
from rrm_jax.sampler.inputs import forced_ids

# The order policies of compare_many; the one definition (evaluation imports it).
SWAPS = ("random", "both", "none")
TRUNCATION_MARKER = "\n[...]\n"
# Decoding of the released RRM evaluation (rrm_prompt.json: temperature 0.6, top_p 1.0, up to 8192 new tokens).
DEFAULT_SAMPLING = dict(max_new_tokens=8192, temperature=0.6, top_p=1.0)


def new_token_limit(model, max_prompt_tokens: int | None, forced: int) -> int | None:
    """The most new tokens a sample can take and still leave the prompt ``max_prompt_tokens`` (a quarter of the
    model's context when None) and the forced suffix ``forced`` tokens; None when the context is unknown."""
    ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if ctx is None:
        return None
    return ctx - forced - (max_prompt_tokens or ctx // 4)


# A DirectJudge's tokens after the forced suffix: the digit and "}" (a few spare for tokenizers that split them).
DIRECT_NEW_TOKENS = 8


def adaptive_savings(verdicts: Sequence[Verdict], max_samples: int) -> float:
    """Fraction of the samples budget (`max_samples` per comparison) that adaptive voting did not draw."""
    if not verdicts:
        return 0.0
    return 1.0 - sum(v.samples_drawn for v in verdicts) / (max_samples * len(verdicts))


def verdict_digit_ids(tokenizer: Any) -> tuple[int, int]:
    """The token ids of the "1" and "2" that follow "\\boxed{Assistant " in this tokenizer."""
    one = tokenizer.encode("\\boxed{Assistant 1}", add_special_tokens=False)
    two = tokenizer.encode("\\boxed{Assistant 2}", add_special_tokens=False)
    t = next((k for k, (x, y) in enumerate(zip(one, two)) if x != y), None)
    if t is None or tokenizer.decode([one[t]]).strip() != "1" or tokenizer.decode([two[t]]).strip() != "2":
        raise ValueError("cannot locate single verdict-digit tokens for '1'/'2' in this tokenizer")
    return one[t], two[t]


@dataclasses.dataclass
class _Sample:
    order: str  # "ab" | "ba"
    text: str
    tokens: int
    shown: int | None  # parsed verdict in the shown frame (0 = first shown)
    soft_shown: float | None  # P(first shown better) from the digit probabilities, None when unavailable
    forced: bool


@dataclasses.dataclass
class _Item:
    index: int
    orders: list[str]
    prompts: list[str]
    truncated: bool
    samples: list[_Sample] = dataclasses.field(default_factory=list)
    done: bool = False

    def counts(self) -> tuple[int, int]:
        a = sum(1 for s in self.samples if s.shown is not None and (s.shown == 0) == (s.order == "ab"))
        b = sum(1 for s in self.samples if s.shown is not None) - a
        return a, b


class Judge:
    """An RRM as a pairwise judge. `model` is an `rrm_jax.Model` with a tokenizer; `generate` overrides
    `rrm_jax.sampler.generate` (tests use a fake one)."""

    direct = False  # see DirectJudge

    def __init__(
        self,
        model,
        *,
        prompt: JudgePrompt | str = RRM_PROMPT_V1,
        sampling=None,
        max_prompt_tokens: int | None = None,
        generate: Callable | None = None,
    ):
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError("Judge needs a model with a tokenizer (rrm_jax.load(path) or init(..., tokenizer=))")
        self.prompt = get_prompt(prompt)
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        self.max_prompt_tokens = max_prompt_tokens
        self._generate = generate or sample
        self.digit_ids = verdict_digit_ids(self.tokenizer)
        defaults = sampling is None
        if defaults:
            sampling = SamplingConfig(**DEFAULT_SAMPLING)
        self.suffix_ids = list(forced_ids(self.tokenizer, sampling))
        limit = new_token_limit(model, max_prompt_tokens, len(self.suffix_ids))
        if defaults and limit is not None and 0 < limit < sampling.max_new_tokens:
            # the default thinking length is the released 7B/32B judges'; a smaller context gets what it holds,
            # as the commands clamp it (an explicit `sampling` is the caller's to choose, and is kept)
            sampling = dataclasses.replace(sampling, max_new_tokens=limit)
        self.sampling = sampling
        self.last_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ prompts
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render(self, query: str, first: str, second: str) -> str:
        """The exact prompt string fed to the model, `first` shown as Assistant 1."""
        return render_prompt(self.tokenizer, self.prompt, query, first, second)

    def fit(self, query: str, a: str, b: str) -> tuple[str, str, str, bool]:
        """Apply the truncation policy: when a rendered prompt (either order) exceeds `max_prompt_tokens`, the
        longest of query/a/b are shortened first (water-filling) by cutting out their MIDDLE - the head and the
        tail are kept, joined by TRUNCATION_MARKER. Returns (query, a, b, truncated)."""
        if self.max_prompt_tokens is None:
            return query, a, b, False
        limit = self.max_prompt_tokens

        def length(q, x, y):
            return max(len(self._encode(self.render(q, x, y))), len(self._encode(self.render(q, y, x))))

        if length(query, a, b) <= limit:
            return query, a, b, False
        overhead = length("", "", "")
        ids = [self._encode(t) for t in (query, a, b)]
        marker = len(self._encode(TRUNCATION_MARKER))
        budget = limit - overhead
        for _ in range(8):
            caps = _water_fill([len(x) for x in ids], budget, marker)
            if caps is None:
                break
            texts = [_cut_middle(self.tokenizer, x, c, marker) for x, c in zip(ids, caps)]
            over = length(*texts) - limit
            if over <= 0:
                return texts[0], texts[1], texts[2], True
            budget -= over  # re-tokenisation at the cuts may cost a few tokens: tighten and retry
        raise ValueError(
            f"cannot fit the comparison into max_prompt_tokens={limit}: the prompt template alone "
            f"takes {overhead} tokens"
        )

    # ------------------------------------------------------------------ samples -> verdicts
    def _digit_position(self, comp, shown: int | None) -> int | None:
        ids = list(comp.token_ids)
        if comp.forced_at is not None:
            k = comp.forced_at + len(self.suffix_ids)
            if ids[comp.forced_at : k] == self.suffix_ids:
                return k
        if shown is None:
            return None
        want = self.digit_ids[shown]
        for i in range(len(ids) - 1, -1, -1):
            if ids[i] != want:
                continue
            before = self.tokenizer.decode(ids[max(0, i - 12) : i])
            after = self.tokenizer.decode(ids[i + 1 : i + 4])
            if re.search(r"assistant\s*$", before, re.I) and re.match(r"\s*\}", after):
                return i
        return None

    def _sample(self, comp, order: str) -> _Sample:
        shown = parse_verdict(comp.text)
        soft = None
        lp = getattr(comp, "probe_logprobs", None)
        if lp is not None:
            pos = self._digit_position(comp, shown)
            if pos is not None and pos < len(lp):
                l1, l2 = float(lp[pos, 0]), float(lp[pos, 1])
                if math.isfinite(l1) or math.isfinite(l2):
                    soft = 1.0 / (1.0 + math.exp(min(700.0, l2 - l1)))
        forced = comp.forced_at is not None or comp.finish_reason == "budget"
        return _Sample(order, comp.text, int(comp.num_tokens), shown, soft, forced)

    @staticmethod
    def _verdict(item: _Item) -> Verdict:
        a, b = item.counts()
        softs = []
        for s in item.samples:
            p = s.soft_shown if s.soft_shown is not None else (None if s.shown is None else float(s.shown == 0))
            if p is not None:
                softs.append(p if s.order == "ab" else 1.0 - p)
        return Verdict(
            winner=majority(a, b),
            votes_a=a,
            votes_b=b,
            invalid=sum(s.shown is None for s in item.samples),
            soft=float(np.mean(softs)) if softs else 0.5,
            reasonings=[s.text for s in item.samples],
            orders=[s.order for s in item.samples],
            tokens=sum(s.tokens for s in item.samples),
            samples_drawn=len(item.samples),
            forced=sum(s.forced for s in item.samples),
            truncated=item.truncated,
            sample_verdicts=[
                None if s.shown is None else (s.shown if s.order == "ab" else 1 - s.shown) for s in item.samples
            ],
        )

    # ------------------------------------------------------------------ judging
    def compare(
        self, query: str, a: str, b: str, *, votes: int = 1, swap: str = "random", seed: int = 0, adaptive: bool = False
    ) -> Verdict:
        return self.compare_many([(query, a, b)], votes=votes, swap=swap, seed=seed, adaptive=adaptive)[0]

    def compare_many(
        self,
        pairs: Sequence[tuple[str, str, str]],
        *,
        votes: int = 1,
        swap: str = "random",
        seed: int = 0,
        adaptive: bool = False,
        progress: bool = False,
        item_ids: Sequence[int] | None = None,
    ) -> list[Verdict]:
        """Judge every (query, a, b). `votes` samples per shown order (swap="both" shows both orders, so 2*votes
        samples). swap="random" flips the order with a coin seeded by (seed, item id) - item id = `item_ids[i]`
        (pass dataset row numbers so a resumed run sees the same orders) or the position i. With `adaptive`,
        votes are drawn in rounds and an item stops once the remaining votes cannot change its majority."""
        if swap not in SWAPS:
            raise ValueError(f"swap must be one of {SWAPS}, got {swap!r}")
        if isinstance(votes, bool) or not isinstance(votes, int | np.integer) or votes < 1:
            raise ValueError(f"votes must be an integer >= 1, got {votes!r}")
        if item_ids is not None and len(item_ids) != len(pairs):
            raise ValueError(f"item_ids has {len(item_ids)} entries for {len(pairs)} pairs")
        items = []
        for i, pair in enumerate(pairs):
            if len(pair) != 3 or not all(isinstance(x, str) for x in pair):
                raise TypeError(f"pair {i}: expected (query, a, b) strings, got {type(pair).__name__} {pair!r:.80}")
            q, a, b, truncated = self.fit(*pair)
            key = i if item_ids is None else int(item_ids[i])
            orders = {"none": ["ab"], "both": ["ab", "ba"], "random": [("ba" if show_first_b(seed, key) else "ab")]}[
                swap
            ]
            prompts = [self.render(q, a, b) if o == "ab" else self.render(q, b, a) for o in orders]
            items.append(_Item(i, orders, prompts, truncated))
        t0 = time.perf_counter()
        n_orders = 2 if swap == "both" else 1
        rounds = calls = 0
        while True:
            active = [it for it in items if not it.done]
            if not active:
                break
            if not adaptive:
                x = votes
            else:
                # The fewest extra samples per shown order that could settle some item (all going to its leader),
                # minimum over items so no item ever overshoots what it needs.
                x = min(_needed(it, votes, n_orders) for it in active)
            cfg = dataclasses.replace(
                self.sampling,
                n=x,
                seed=derive_seed(self.sampling.seed, seed, rounds),
                probe_token_ids=tuple(self.digit_ids),
            )
            prompts = [p for it in active for p in it.prompts]
            comps = self._generate(self.model, prompts, cfg, progress=progress)
            calls += 1
            if len(comps) != len(prompts) * x:
                raise RuntimeError(f"generate returned {len(comps)} completions for {len(prompts)} prompts x n={x}")
            k = 0
            for it in active:
                for o in it.orders:
                    for _ in range(x):
                        it.samples.append(self._sample(comps[k], o))
                        k += 1
                drawn = len(it.samples) // n_orders
                if not adaptive or drawn >= votes:
                    it.done = True
                else:
                    a, b = it.counts()
                    it.done = abs(a - b) > n_orders * (votes - drawn)
            rounds += 1
        verdicts = [self._verdict(it) for it in items]
        self.last_stats = dict(
            comparisons=len(items),
            generate_calls=calls,
            samples_drawn=sum(v.samples_drawn for v in verdicts),
            samples_max=len(items) * votes * n_orders,
            tokens=sum(v.tokens for v in verdicts),
            seconds=time.perf_counter() - t0,
        )
        return verdicts

    # ------------------------------------------------------------------ tournaments
    def _tournament_compare(self, votes, swap, seed, adaptive):
        calls = itertools.count()

        def compare_many(items):
            # A fresh seed per tournament round, so round 2's coin flips are not round 1's.
            return self.compare_many(
                items, votes=votes, swap=swap, seed=derive_seed(seed, next(calls), 0x7E), adaptive=adaptive
            )

        return compare_many

    def rank(
        self,
        query: str,
        candidates: Sequence[str],
        *,
        strategy: str = "knockout",
        votes: int = 1,
        seed: int = 0,
        swap: str = "random",
        adaptive: bool = False,
        **kw,
    ) -> tournament.Ranking:
        """Rank candidates by a knockout (n-1 comparisons) or an ELO round-robin (n(n-1)/2, x2 with both_orders=True).
        Each comparison draws `votes` samples in one prefill; Ranking reports comparisons, samples and tokens."""
        cm = self._tournament_compare(votes, swap, seed, adaptive)
        return tournament.rank(cm, query, candidates, strategy=strategy, votes=1, seed=seed, **kw)

    def best_of_n(
        self, query: str, candidates: Sequence[str], *, strategy: str = "knockout", votes: int = 1, seed: int = 0, **kw
    ) -> tuple[int, tournament.Ranking]:
        r = self.rank(query, candidates, strategy=strategy, votes=votes, seed=seed, **kw)
        return r.best, r

    def rank_many(
        self,
        queries: Sequence[str],
        candidate_lists: Sequence[Sequence[str]],
        *,
        strategy: str = "knockout",
        votes: int = 1,
        seed: int = 0,
        swap: str = "random",
        adaptive: bool = False,
    ) -> list[tournament.Ranking]:
        """One tournament per query, played in lockstep: each round of all of them is one `compare_many` (one
        sampler batch), e.g. every group of a GRPO step. Tournament k's bracket/coin seed is derive_seed(seed, k)."""
        if len(queries) != len(candidate_lists):
            raise ValueError(f"{len(queries)} queries but {len(candidate_lists)} candidate lists")
        games = [
            tournament.rounds_of(strategy, q, c, seed=derive_seed(seed, k, 0x6A))
            for k, (q, c) in enumerate(zip(queries, candidate_lists))
        ]
        return tournament.run_many(self._tournament_compare(votes, swap, seed, adaptive), games)


class DirectJudge(Judge):
    """The paper's direct baseline: the same model made to answer without reasoning. Its thinking budget is 0, so
    the sampler emits the verdict suffix ("</think> ... \\boxed{Assistant ") as the first tokens of every sample and
    the model writes only the digit; at most DIRECT_NEW_TOKENS more tokens are drawn, stopping at the "}"."""

    direct = True

    def __init__(self, model, *, sampling=None, **kw):
        base = sampling if sampling is not None else SamplingConfig(**DEFAULT_SAMPLING)
        suffix = base.forced_suffix
        # "}" closes the verdict box; a custom suffix that already holds one would stop the sample inside it
        stops = tuple(base.stop_strings)
        if isinstance(suffix, str) and "}" not in suffix and "}" not in stops:
            stops += ("}",)
        super().__init__(
            model,
            sampling=dataclasses.replace(
                base, max_think_tokens=0, max_new_tokens=min(base.max_new_tokens, DIRECT_NEW_TOKENS), stop_strings=stops
            ),
            **kw,
        )


def _needed(item: _Item, votes: int, n_orders: int) -> int:
    drawn = len(item.samples) // n_orders
    remaining = votes - drawn
    a, b = item.counts()
    # After x more per order (n_orders * x votes, all to the leader) the item settles when
    # |a - b| + n_orders*x > n_orders*(remaining - x).
    x = (n_orders * remaining - abs(a - b)) // (2 * n_orders) + 1
    return max(1, min(remaining, x))


def _water_fill(lengths: list[int], budget: int, marker: int) -> list[int] | None:
    """Token caps per piece: pieces shorter than the common cap keep everything, the rest are cut to the cap
    (a cut piece also carries the marker). None when even a tiny cap does not fit."""
    if sum(lengths) <= budget:
        return list(lengths)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    caps = list(lengths)
    left = budget
    for rank_, i in enumerate(order):
        share = left // (len(order) - rank_)
        if lengths[i] <= share:
            left -= lengths[i]
            continue
        for j in order[rank_:]:
            caps[j] = max(0, share - marker)
        if min(caps[j] for j in order[rank_:]) < 8:
            return None
        return caps
    return caps


def _cut_middle(tokenizer, ids: list[int], cap: int, marker: int) -> str:
    if len(ids) <= cap + marker:
        return tokenizer.decode(ids)
    head = (cap + 1) // 2
    tail = cap - head
    return tokenizer.decode(ids[:head]) + TRUNCATION_MARKER + (tokenizer.decode(ids[-tail:]) if tail else "")
