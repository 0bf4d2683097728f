"""Tournaments with a simulated judge of known accuracy over candidates of known quality."""

import itertools
import math

import numpy as np
import pytest

from rrm_jax.judge.tournament import ELO_SCALE, best_of_n, bradley_terry, elo_sequential, knockout, rank, round_robin
from rrm_jax.judge.verdict import Verdict


class SimJudge:
    """Candidates are strings "c<k>" with quality q[k]. mode "const": the better one wins with probability p;
    mode "bt": a wins with probability sigmoid(q_a - q_b). `soft` is that true probability."""

    def __init__(self, quality, seed, mode="bt", p=0.8, invalid=False):
        self.q = np.asarray(quality, float)
        self.rng = np.random.default_rng(seed)
        self.mode, self.p, self.invalid = mode, p, invalid
        self.calls, self.items = 0, 0

    def prob_a(self, i, j):
        if self.mode == "const":
            return self.p if self.q[i] > self.q[j] else 1 - self.p
        return 1 / (1 + math.exp(-(self.q[i] - self.q[j])))

    def __call__(self, items):
        self.calls += 1
        self.items += len(items)
        out = []
        for query, a, b in items:
            assert query == "Q"
            i, j = int(a[1:]), int(b[1:])
            pa = self.prob_a(i, j)
            if self.invalid:
                out.append(Verdict(None, 0, 0, 1, 0.5, tokens=7, samples_drawn=1))
                continue
            win = 0 if self.rng.random() < pa else 1
            out.append(Verdict(win, int(win == 0), int(win == 1), 0, pa, tokens=7, samples_drawn=1))
        return out


def cands(n):
    return [f"c{k}" for k in range(n)]


@pytest.mark.parametrize("n", list(range(1, 18)))
def test_knockout_match_count(n):
    sim = SimJudge(np.arange(n), seed=n)
    r = knockout(sim, "Q", cands(n), seed=n)
    assert r.comparisons == sim.items == n - 1 == len(r.matches)
    assert sim.calls == r.rounds == (math.ceil(math.log2(n)) if n > 1 else 0)  # one call per round
    assert sorted(r.order) == list(range(n)) and r.tokens == 7 * (n - 1)
    champ = r.order[0]
    assert all(m["i" if m["winner"] == 0 else "j"] == champ for m in r.matches if champ in (m["i"], m["j"]))
    # Everyone but the champion loses exactly once.
    losers = [m["j"] if m["winner"] == 0 else m["i"] for m in r.matches]
    assert sorted(losers) == sorted(set(range(n)) - {champ})


def test_knockout_votes_and_undecided_matches():
    sim = SimJudge(np.arange(11), seed=0)
    r = knockout(sim, "Q", cands(11), seed=3, votes=3)
    assert r.comparisons == sim.items == 3 * 10
    # A judge that never gives a verdict still yields a full bracket, decided by seeded coins.
    r1 = knockout(SimJudge(np.arange(11), 0, invalid=True), "Q", cands(11), seed=5)
    r2 = knockout(SimJudge(np.arange(11), 1, invalid=True), "Q", cands(11), seed=5)
    assert r1.comparisons == 10 and r1.order == r2.order
    assert not any(m["decided_by_vote"] for m in r1.matches)


def p_best_wins(n, p):
    """Independent closed form: the bracket pads n to P = 2^R with P - n byes handed to random players; the best
    player plays R matches, or R - 1 when it holds one of the byes, and wins each with probability p."""
    R = math.ceil(math.log2(n))
    byes = 2**R - n
    return byes / n * p ** (R - 1) + (1 - byes / n) * p**R


@pytest.mark.parametrize("n,p", [(8, 0.8), (5, 0.75), (12, 0.9)])
def test_best_of_n_rate_matches_closed_form(n, p):
    trials = 2000
    quality = np.random.default_rng(n).permutation(n)
    best = int(np.argmax(quality))
    sim = SimJudge(quality, seed=100 + n, mode="const", p=p)
    hits = sum(best_of_n(sim, "Q", cands(n), seed=s)[0] == best for s in range(trials))
    expected = p_best_wins(n, p)
    assert abs(hits / trials - expected) < 4 * math.sqrt(expected * (1 - expected) / trials) + 1e-3


def kendall_tau(order, true_order):
    pos = {c: k for k, c in enumerate(order)}
    concord = 0
    pairs = list(itertools.combinations(true_order, 2))
    for x, y in pairs:  # x truly better than y
        concord += 1 if pos[x] < pos[y] else -1
    return concord / len(pairs)


@pytest.mark.parametrize("rating", ["bt", "elo"])
def test_round_robin_recovers_order_as_votes_grow(rating):
    n = 6
    quality = np.array([0.0, 0.4, 0.8, 1.2, 1.6, 2.0])[np.random.default_rng(1).permutation(n)]
    true_order = list(np.argsort(-quality))
    taus = {}
    for votes in (1, 8, 64):
        ts = []
        for s in range(12):
            sim = SimJudge(quality, seed=1000 * votes + s)
            r = round_robin(sim, "Q", cands(n), votes=votes, seed=s, rating=rating, k=8.0)
            assert r.comparisons == sim.items == votes * n * (n - 1) // 2 and sim.calls == 1
            ts.append(kendall_tau(r.order, true_order))
        taus[votes] = np.mean(ts)
    assert taus[1] < taus[8] < taus[64] or taus[64] == 1.0 and taus[1] < taus[8]
    assert taus[64] >= 0.9
    # With many votes the BT fit recovers the true order exactly and the strengths approximately.
    sim = SimJudge(quality, seed=7)
    r = round_robin(sim, "Q", cands(n), votes=400, both_orders=True, seed=0)
    assert r.comparisons == 400 * n * (n - 1)
    assert r.order == true_order
    fitted = (r.ratings - r.ratings.mean()) / ELO_SCALE
    np.testing.assert_allclose(fitted, quality - quality.mean(), atol=0.15)


def test_round_robin_expected_scores_are_the_soft_probabilities():
    quality = np.array([0.0, 1.0, -0.5, 2.0])
    sim = SimJudge(quality, seed=0)
    r = rank(sim, "Q", cands(4), strategy="elo", both_orders=True, seed=0)
    for i, j in itertools.permutations(range(4), 2):
        assert r.expected[i, j] == pytest.approx(1 / (1 + math.exp(quality[j] - quality[i])))
    assert list(np.argsort(-r.expected_scores())) == list(np.argsort(-quality))
    assert r.wins.sum() == r.comparisons == 12


def test_bradley_terry_two_players_closed_form():
    w = np.array([[0.0, 7.0], [3.0, 0.0]])
    r = bradley_terry(w, prior=0.0)
    assert (r[0] - r[1]) / ELO_SCALE == pytest.approx(math.log(7 / 3), abs=1e-9)
    assert r.mean() == pytest.approx(1500.0)
    # Elo-scale meaning: the expected score at this rating gap is the observed 0.7.
    assert 1 / (1 + 10 ** ((r[1] - r[0]) / 400)) == pytest.approx(0.7, abs=1e-9)


def zermelo_mm(w, iters=20000):
    """Hunter's (2004) MM / Zermelo iteration for the plain BT MLE: p_i <- W_i / sum_j n_ij / (p_i + p_j)."""
    n = len(w)
    games = w + w.T
    p = np.ones(n)
    for _ in range(iters):
        denom = np.array([sum(games[i, j] / (p[i] + p[j]) for j in range(n) if j != i) for i in range(n)])
        p = w.sum(1) / denom
        p /= np.exp(np.log(p).mean())
    return np.log(p)


def test_bradley_terry_matches_independent_mm():
    rng = np.random.default_rng(3)
    w = rng.integers(1, 9, size=(5, 5)).astype(float)
    np.fill_diagonal(w, 0)
    theta = (bradley_terry(w, prior=0.0) - 1500) / ELO_SCALE
    np.testing.assert_allclose(theta, zermelo_mm(w), atol=1e-6)


def test_bradley_terry_prior_keeps_undefeated_finite():
    w = np.array([[0, 3, 2], [0, 0, 1], [0, 1, 0]], float)  # player 0 never lost: plain MLE diverges
    r = bradley_terry(w)
    assert np.all(np.isfinite(r)) and np.argmax(r) == 0 and r[0] - r[1] < 4000
    assert np.all(np.isfinite(bradley_terry(np.zeros((4, 4))))) and np.ptp(bradley_terry(np.zeros((4, 4)))) == 0
    with pytest.raises(ValueError, match="square"):
        bradley_terry(np.zeros((2, 3)))


def test_elo_sequential_hand_computed():
    r = elo_sequential([(0, 1, 1.0)], 2, k=32)
    np.testing.assert_allclose(r, [1516.0, 1484.0])
    # Second game, 1 beats 0: expected score of 1 is 1/(1+10^(32/400)).
    r = elo_sequential([(0, 1, 1.0), (1, 0, 1.0)], 2, k=32)
    e1 = 1 / (1 + 10 ** ((1516 - 1484) / 400))
    np.testing.assert_allclose(r, [1516 - 32 * (1 - e1), 1484 + 32 * (1 - e1)])


def test_bad_inputs():
    sim = SimJudge(np.arange(3), 0)
    with pytest.raises(ValueError, match="strategy"):
        rank(sim, "Q", cands(3), strategy="swiss")
    with pytest.raises(ValueError, match="votes"):
        knockout(sim, "Q", cands(3), votes=0)
    with pytest.raises(RuntimeError, match="returned 0 verdicts"):
        knockout(lambda items: [], "Q", cands(3))


def test_run_many_plays_in_lockstep_with_the_verdicts_each_gets_alone():
    """Tournaments of 2, 5 and 8 players played together: one call per round (the longest bracket's 3 rounds;
    a round-robin's single round goes with round 1), and each Ranking equals that tournament played alone with
    a deterministic judge (the better candidate always wins)."""
    from rrm_jax.judge.tournament import rounds_of, run_many

    judge = SimJudge(range(8), seed=0, mode="const", p=1.0)
    specs = [("knockout", 2, 3), ("elo", 5, 4), ("knockout", 8, 5), ("knockout", 5, 6)]
    together = run_many(judge, [rounds_of(s, "Q", cands(n), seed=t) for s, n, t in specs])
    assert judge.calls == 3
    seen = []

    def keyed(items, ids):
        seen.append(ids)
        return judge(items)

    again = run_many(keyed, [rounds_of(s, "Q", cands(n), seed=t) for s, n, t in specs], with_ids=True)
    for (s, n, t), r, r2 in zip(specs, together, again):
        alone = rank(SimJudge(range(8), seed=0, mode="const", p=1.0), "Q", cands(n), strategy=s, seed=t)
        assert r.order == alone.order == r2.order and r.comparisons == alone.comparisons
        assert r.order[0] == n - 1  # the best candidate wins every format
    # ids name (tournament, its round, index): the 8-player bracket (tournament 2) plays 4, 2, 1 matches
    assert [[i for i in ids if i[0] == 2] for ids in seen] == [
        [(2, r, i) for i in range(m)] for r, m in ((0, 4), (1, 2), (2, 1))
    ]


def test_round_robin_without_valid_votes_ranks_by_the_soft_score():
    """A judge whose verdict never parses (a random model, a budget that forces the suffix) still has verdict-digit
    probabilities: with no valid vote the soft score counts as a fractional win, as it decides a knockout match."""

    def soft_only(items):
        out = []
        for _, a, b in items:
            pa = 0.7 if int(a[1:]) > int(b[1:]) else 0.3
            out.append(Verdict(None, 0, 0, 1, pa, tokens=1, samples_drawn=1))
        return out

    r = round_robin(soft_only, "Q", cands(4), seed=1)
    assert r.order == [3, 2, 1, 0] and np.allclose(r.wins + r.wins.T, 1 - np.eye(4))
    flat = round_robin(lambda items: [Verdict(None, 0, 0, 1, 0.5) for _ in items], "Q", cands(3))
    assert np.all(flat.wins == 0)  # nothing known at all: no wins
