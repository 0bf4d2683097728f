"""Ranking several candidates with a pairwise judge: Bradley-Terry / Elo round-robin and knockout brackets.

Pure functions over a `compare_many(list[(query, a, b)]) -> list[Verdict]` callable; nothing here imports the
model, so everything is tested with a simulated judge. Ratings are on the Elo scale: P(i beats j) =
1 / (1 + 10 ** ((R_j - R_i) / 400)), centred on 1500.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from rrm_jax.judge.verdict import Verdict

CompareMany = Callable[[Sequence[tuple[str, str, str]]], list[Verdict]]
ELO_SCALE = 400.0 / math.log(10.0)  # natural-log BT strength -> Elo points
ELO_CENTER = 1500.0


@dataclasses.dataclass
class Ranking:
    order: list[int]  # candidate indices, best first
    ratings: np.ndarray  # [n] Elo-scale ratings (Bradley-Terry fit unless strategy says otherwise)
    wins: np.ndarray  # [n, n] wins[i, j] = valid votes for i over j
    comparisons: int  # pairwise judgements requested (items sent to compare_many)
    tokens: int  # generated tokens spent
    strategy: str  # "knockout" | "elo" (round-robin)
    samples: int = 0  # judge samples drawn (votes), summed over comparisons
    expected: np.ndarray | None = None  # [n, n] mean soft P(i beats j), NaN where never compared
    matches: list[dict] = dataclasses.field(default_factory=list)  # log: round, i, j, votes, winner, soft
    rounds: int = 0  # knockout rounds / compare_many calls
    reached: np.ndarray | None = None  # knockout: [n] rounds survived (a bye counts; the champion gets rounds + 1)

    @property
    def best(self) -> int:
        return self.order[0]

    def expected_scores(self) -> np.ndarray | None:
        """Per-candidate mean soft score against the opponents it met (a soft win rate)."""
        if self.expected is None:
            return None
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.where(np.eye(len(self.order), dtype=bool), np.nan, self.expected), axis=1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("ratings", "wins", "expected", "reached"):
            if d[k] is not None:
                d[k] = np.asarray(d[k]).tolist()
        return d


# ----------------------------------------------------------------------------------------------------------
# Ratings


def bradley_terry(wins: np.ndarray, *, prior: float = 0.01, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry maximum (penalised) likelihood; Elo-scale ratings centred on 1500.

    `wins[i, j]` = (possibly fractional) wins of i over j. `prior` is a Gaussian (ridge) penalty
    prior/2 * sum(theta**2) on the natural-log strengths: it keeps undefeated/winless players and disconnected
    comparison graphs finite. prior=0 gives the plain MLE (exists only when the win graph is strongly connected).
    Damped Newton on the concave log-likelihood.
    """
    w = np.asarray(wins, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"wins must be a square matrix, got shape {w.shape}")
    if (w < 0).any():
        raise ValueError("wins must be non-negative")
    n = w.shape[0]
    w = w * (1 - np.eye(n))
    games = w + w.T
    theta = np.zeros(n)

    def loglik(t):
        d = t[:, None] - t[None, :]
        return float(np.sum(w * -np.logaddexp(0.0, -d))) - 0.5 * prior * float(t @ t)

    f = loglik(theta)
    for _ in range(max_iter):
        d = theta[:, None] - theta[None, :]
        p = 1.0 / (1.0 + np.exp(-d))  # p[i, j] = P(i beats j)
        grad = np.sum(w * (1 - p) - w.T * p, axis=1) - prior * theta
        c = games * p * (1 - p)
        hess = c - np.diag(c.sum(axis=1)) - prior * np.eye(n)  # negative semi-definite
        # Ratings are shift-invariant without a prior: solve in the mean-zero subspace (lstsq = pseudo-inverse).
        step = np.linalg.lstsq(-hess, grad, rcond=None)[0]
        step -= step.mean() if prior == 0 else 0.0
        t = 1.0
        while True:
            cand = theta + t * step
            fc = loglik(cand)
            if fc >= f - 1e-12:
                break
            t *= 0.5
            if t < 1e-8:  # no ascent direction left: converged as far as floating point allows
                return ELO_CENTER + ELO_SCALE * (theta - theta.mean())
        theta, f_old, f = cand, f, fc
        if np.max(np.abs(t * step)) < tol or abs(f - f_old) < tol * max(1.0, abs(f)):
            break
    theta -= theta.mean()
    return ELO_CENTER + ELO_SCALE * theta


def elo_expected(r_i: float, r_j: float) -> float:
    return 1.0 / (1.0 + 10.0 ** ((r_j - r_i) / 400.0))


def elo_sequential(
    results: Sequence[tuple[int, int, float]], n: int, *, k: float = 32.0, initial: float = ELO_CENTER
) -> np.ndarray:
    """The classic sequential Elo update over match results (i, j, score of i in [0, 1]), in the order given."""
    r = np.full(n, float(initial))
    for i, j, s in results:
        e = elo_expected(r[i], r[j])
        r[i] += k * (s - e)
        r[j] -= k * (s - e)
    return r


def _order(ratings: np.ndarray, *keys: np.ndarray) -> list[int]:
    # Best first; ties broken by the extra keys (descending), then by index for determinism.
    n = len(ratings)
    cols = [np.arange(n)] + [-np.asarray(k, dtype=float) for k in reversed(keys)] + [-np.asarray(ratings)]
    return [int(i) for i in np.lexsort(cols)]


# ----------------------------------------------------------------------------------------------------------
# Judging helpers


def _match_outcome(verdicts: Sequence[Verdict], rng: np.random.Generator) -> tuple[int, int, int, float, bool]:
    """Aggregate the verdicts of one match (a vs b, possibly judged several times): (winner, votes_a, votes_b,
    soft, decided_by_vote). No majority -> the soft score decides, then a seeded coin."""
    va = sum(v.votes_a for v in verdicts)
    vb = sum(v.votes_b for v in verdicts)
    soft = float(np.mean([v.soft for v in verdicts]))
    if va != vb:
        return (0 if va > vb else 1), va, vb, soft, True
    if soft != 0.5:
        return (0 if soft > 0.5 else 1), va, vb, soft, False
    return int(rng.integers(2)), va, vb, soft, False


def _check(candidates: Sequence[str], votes: int):
    if len(candidates) < 1:
        raise ValueError("need at least one candidate")
    if votes < 1:
        raise ValueError(f"votes must be >= 1, got {votes}")


def _call(compare_many: CompareMany, items: list[tuple[str, str, str]]) -> list[Verdict]:
    out = list(compare_many(items))
    if len(out) != len(items):
        raise RuntimeError(f"compare_many returned {len(out)} verdicts for {len(items)} comparisons")
    return out


# ----------------------------------------------------------------------------------------------------------
# Strategies


def round_robin(
    compare_many: CompareMany,
    query: str,
    candidates: Sequence[str],
    votes: int = 1,
    both_orders: bool = False,
    seed: int = 0,
    *,
    rating: str = "bt",
    k: float = 32.0,
    prior: float = 0.01,
) -> Ranking:
    """Every pair judged `votes` times (x2 with both_orders) in ONE compare_many call; ratings by Bradley-Terry
    (rating="bt") or the sequential Elo update over the matches in a seeded random order (rating="elo").

    `votes` here repeats a pair as separate items; a `Judge` instead passes its votes to the sampler (one prefill)
    and calls this with votes=1. Without both_orders each pair's presentation order is a seeded coin.
    """
    return _drive(
        compare_many, round_robin_rounds(query, candidates, votes, both_orders, seed, rating=rating, k=k, prior=prior)
    )


def round_robin_rounds(query, candidates, votes=1, both_orders=False, seed=0, *, rating="bt", k=32.0, prior=0.01):
    """:func:`round_robin` as rounds: a generator that yields its comparisons and is sent their verdicts."""
    _check(candidates, votes)
    n = len(candidates)
    rng = np.random.default_rng([seed, 0x52])
    pairs: list[tuple[int, int]] = []
    for i in range(n):
        for j in range(i + 1, n):
            if both_orders:
                pairs += [(i, j), (j, i)]
            else:
                pairs.append((i, j) if rng.integers(2) == 0 else (j, i))
    pairs = [p for p in pairs for _ in range(votes)]
    verdicts = (yield [(query, candidates[i], candidates[j]) for i, j in pairs]) if pairs else []
    wins = np.zeros((n, n))
    soft_sum, soft_cnt = np.zeros((n, n)), np.zeros((n, n))
    results, matches = [], []
    for (i, j), v in zip(pairs, verdicts):
        # no valid vote at all: the soft score (the verdict digit's probabilities) counts as a fractional win, as
        # it decides such a match in a knockout; otherwise a judge that never finishes its verdict ranks nothing
        va, vb = (v.votes_a, v.votes_b) if v.votes_a + v.votes_b else (v.soft, 1 - v.soft) if v.soft != 0.5 else (0, 0)
        wins[i, j] += va
        wins[j, i] += vb
        soft_sum[i, j] += v.soft
        soft_sum[j, i] += 1 - v.soft
        soft_cnt[i, j] += 1
        soft_cnt[j, i] += 1
        valid = v.votes_a + v.votes_b
        results.append((i, j, v.votes_a / valid if valid else 0.5))
        matches.append(dict(round=0, i=i, j=j, votes_a=v.votes_a, votes_b=v.votes_b, winner=v.winner, soft=v.soft))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(soft_cnt > 0, soft_sum / np.maximum(soft_cnt, 1), np.nan)
    if rating == "bt":
        ratings = bradley_terry(wins, prior=prior)
    elif rating == "elo":
        perm = rng.permutation(len(results))
        ratings = elo_sequential([results[t] for t in perm], n, k=k)
    else:
        raise ValueError(f"rating must be 'bt' or 'elo', got {rating!r}")
    exp_score = (
        np.nan_to_num(np.nanmean(np.where(np.eye(n, dtype=bool), np.nan, expected), axis=1), nan=0.5)
        if n > 1
        else np.zeros(1)
    )
    return Ranking(
        order=_order(ratings, wins.sum(1), exp_score),
        ratings=ratings,
        wins=wins,
        comparisons=len(pairs),
        tokens=sum(v.tokens for v in verdicts),
        samples=sum(v.samples_drawn for v in verdicts),
        strategy="elo",
        expected=expected,
        matches=matches,
        rounds=1 if pairs else 0,
    )


def knockout_bracket(n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """A random first round: (players who play round 1 in pairs, players with a bye). With P the next power of two,
    P - n players get byes and 2n - P play, so every later round has a power-of-two field."""
    perm = [int(x) for x in rng.permutation(n)]
    size = 1 << max(0, (n - 1).bit_length())
    n_byes = size - n
    return perm[n_byes:], perm[:n_byes]


def knockout(
    compare_many: CompareMany,
    query: str,
    candidates: Sequence[str],
    seed: int = 0,
    *,
    votes: int = 1,
    prior: float = 0.01,
) -> Ranking:
    """Single elimination over a seeded random bracket: exactly n - 1 matches (x votes), one compare_many call
    per round. A match without a vote majority goes to the higher soft score, then to a seeded coin.

    Order: champion first, then by the round reached (later = better), ties by a Bradley-Terry fit of the
    bracket's results. `votes` repeats each match as separate items (a `Judge` uses the sampler's n instead).
    """
    return _drive(compare_many, knockout_rounds(query, candidates, seed, votes=votes, prior=prior))


def knockout_rounds(query, candidates, seed=0, *, votes=1, prior=0.01):
    """:func:`knockout` as rounds: a generator that yields each round's comparisons and is sent their verdicts."""
    _check(candidates, votes)
    n = len(candidates)
    rng = np.random.default_rng([seed, 0x4B])
    playing, byes = knockout_bracket(n, rng)
    wins = np.zeros((n, n))
    soft_sum, soft_cnt = np.zeros((n, n)), np.zeros((n, n))
    reached = np.zeros(n)
    comparisons = tokens = samples = rounds = 0
    matches = []
    field = playing
    advance = list(byes)
    while len(field) + len(advance) > 1:
        rounds += 1
        pairs = [(field[t], field[t + 1]) for t in range(0, len(field) - 1, 2)]
        items = [(query, candidates[i], candidates[j]) for i, j in pairs for _ in range(votes)]
        verdicts = yield items
        comparisons += len(items)
        winners = []
        for m, (i, j) in enumerate(pairs):
            vs = verdicts[m * votes : (m + 1) * votes]
            tokens += sum(v.tokens for v in vs)
            samples += sum(v.samples_drawn for v in vs)
            w, va, vb, soft, by_vote = _match_outcome(vs, rng)
            wins[i, j] += va
            wins[j, i] += vb
            soft_sum[i, j] += soft
            soft_sum[j, i] += 1 - soft
            soft_cnt[i, j] += 1
            soft_cnt[j, i] += 1
            win = (i, j)[w]
            winners.append(win)
            reached[win] = rounds
            matches.append(
                dict(round=rounds, i=i, j=j, votes_a=va, votes_b=vb, winner=w, soft=soft, decided_by_vote=by_vote)
            )
        # Bye players join the winners of round 1 in their shuffled positions.
        field = advance + winners if rounds == 1 else winners
        advance = []
        if len(field) == 1:
            break
    if n == 1:
        field = [0]
    champion = field[0]
    reached[champion] = rounds + 1
    # Byes count as surviving round 1.
    for b in byes:
        reached[b] = max(reached[b], 1)
    ratings = bradley_terry(wins, prior=prior)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(soft_cnt > 0, soft_sum / np.maximum(soft_cnt, 1), np.nan)
    order = _order(reached, ratings)
    return Ranking(
        order=order,
        ratings=ratings,
        wins=wins,
        comparisons=comparisons,
        tokens=tokens,
        strategy="knockout",
        samples=samples,
        expected=expected,
        matches=matches,
        rounds=rounds,
        reached=reached,
    )


STRATEGIES = {"knockout": knockout, "elo": round_robin}


def _drive(compare_many: CompareMany, rounds) -> Ranking:
    return run_many(compare_many, [rounds])[0]


def check_tournament(strategy: str, candidates) -> None:
    """A known strategy over a sequence of strings (a bare string would be ranked as its characters)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    if isinstance(candidates, str | bytes) or not all(isinstance(c, str) for c in candidates):
        raise TypeError(f"candidates must be a sequence of strings, got {type(candidates).__name__} {candidates!r:.60}")


def rounds_of(strategy: str, query: str, candidates: Sequence[str], seed: int = 0, votes: int = 1):
    """The generator of one tournament (for :func:`run_many`): ``knockout`` or ``elo`` (round-robin)."""
    check_tournament(strategy, candidates)
    rounds = knockout_rounds if strategy == "knockout" else round_robin_rounds
    return rounds(query, candidates, seed=seed, votes=votes)


def run_many(compare_many: Callable, tournaments: Sequence, *, with_ids: bool = False) -> list[Ranking]:
    """Play several tournaments (``knockout_rounds`` / ``round_robin_rounds`` generators) in lockstep: every
    round's comparisons of every tournament go to ONE compare_many call, so a judge batches a whole training
    step's groups (or a whole best-of-N file) where a loop over queries would call it once per query and round.
    With ``with_ids`` it is called as ``compare_many(items, ids)``, ``ids[i]`` = (tournament, its round, index):
    a key for each comparison that does not depend on what else shares the call."""
    out: list[Ranking | None] = [None] * len(tournaments)
    pending: dict[int, list] = {}
    played = [0] * len(tournaments)

    def advance(k, verdicts=None):
        try:
            pending[k] = next(tournaments[k]) if verdicts is None else tournaments[k].send(verdicts)
        except StopIteration as stop:
            out[k] = stop.value

    for k in range(len(tournaments)):
        advance(k)
    while pending:
        asked = sorted(pending.items())
        pending = {}
        call = compare_many
        if with_ids:
            ids = [(k, played[k], i) for k, items in asked for i in range(len(items))]
            call = lambda items: compare_many(items, ids)  # noqa: E731
        verdicts = _call(call, [item for _, items in asked for item in items])
        at = 0
        for k, items in asked:
            played[k] += 1
            advance(k, verdicts[at : at + len(items)])
            at += len(items)
    return out


def rank(
    compare_many: CompareMany,
    query: str,
    candidates: Sequence[str],
    *,
    strategy: str = "knockout",
    votes: int = 1,
    seed: int = 0,
    **kw,
) -> Ranking:
    check_tournament(strategy, candidates)
    if strategy == "knockout":
        return knockout(compare_many, query, candidates, seed, votes=votes, **kw)
    return round_robin(compare_many, query, candidates, votes, kw.pop("both_orders", False), seed, **kw)


def best_of_n(
    compare_many: CompareMany,
    query: str,
    candidates: Sequence[str],
    *,
    strategy: str = "knockout",
    votes: int = 1,
    seed: int = 0,
    **kw,
) -> tuple[int, Ranking]:
    r = rank(compare_many, query, candidates, strategy=strategy, votes=votes, seed=seed, **kw)
    return r.best, r


def knockout_win_probability(n: int, p: float) -> float:
    """P(the best candidate wins a random-bracket knockout) when it wins each match with probability p:
    with P = next power of two and R = log2(P) rounds, it has a bye (R - 1 matches) with prob (P - n)/n."""
    if n == 1:
        return 1.0
    size = 1 << (n - 1).bit_length()
    rounds = size.bit_length() - 1
    p_bye = (size - n) / n
    return p_bye * p ** (rounds - 1) + (1 - p_bye) * p**rounds
