"""The Judge's logic with a scripted fake sampler (swap handling, votes, adaptive stopping, soft scores,
truncation, tournaments), plus one end-to-end run through the real sampler on a random tiny model."""

import dataclasses
import subprocess
import sys

import pytest

from fakes import FakeGenerate, FakeModel
from rrm_jax.core.seeds import derive_seed, show_first_b
from rrm_jax.judge.judge import TRUNCATION_MARKER, Judge, adaptive_savings, verdict_digit_ids
from rrm_jax.judge.prompt import render_prompt
from rrm_jax.sampler import SamplingConfig


def make_judge(policy, probes=True, **kw):
    gen = FakeGenerate(FakeModel.tokenizer, policy, probes)
    return Judge(FakeModel(), sampling=SamplingConfig(max_new_tokens=64, temperature=0.6), generate=gen, **kw), gen


def prefers_good(first, second, k):
    return ("1" if "GOOD" in first else "2"), False, 0.5


def always_first(first, second, k):
    return "1", False, 0.9


PAIRS = [(f"question {i}", f"GOOD answer {i}", f"bad answer {i}") for i in range(12)]


def test_prompts_orders_and_one_generate_call():
    judge, gen = make_judge(prefers_good)
    vs = judge.compare_many(PAIRS, votes=3, swap="random", seed=11)
    assert len(gen.calls) == 1
    prompts, cfg = gen.calls[0]
    assert cfg.n == 3 and cfg.temperature == 0.6 and cfg.probe_token_ids == judge.digit_ids
    assert judge.digit_ids == (16 + ord("1"), 16 + ord("2"))
    for (q, a, b), p, v in zip(PAIRS, prompts, vs):
        flipped = show_first_b(11, PAIRS.index((q, a, b)))
        assert p == (render_prompt(FakeModel.tokenizer, "rrm", q, b, a) if flipped else judge.render(q, a, b))
        assert p.endswith("<|assistant|><think>\n")
        assert v.orders == ["ba" if flipped else "ab"] * 3
        assert (v.winner, v.votes_a, v.votes_b, v.invalid, v.samples_drawn) == (0, 3, 0, 0, 3)
        assert v.score() == 1.0 and v.sample_verdicts == [0, 0, 0] and len(v.reasonings) == 3
        assert v.tokens == sum(len(FakeModel.tokenizer.encode(t)) for t in v.reasonings)
    assert 0 < sum(v.orders[0] == "ba" for v in vs) < len(vs)


def test_swap_modes_and_position_bias():
    judge, _ = make_judge(always_first)
    none = judge.compare_many(PAIRS, votes=2, swap="none")
    assert all(v.winner == 0 and v.votes_a == 2 and v.soft == pytest.approx(0.9) for v in none)
    both = judge.compare_many(PAIRS, votes=2, swap="both")
    # A judge that always says "Assistant 1" is cancelled out by showing both orders.
    assert all(
        v.orders == ["ab", "ab", "ba", "ba"]
        and (v.votes_a, v.votes_b) == (2, 2)
        and v.winner is None
        and v.soft == pytest.approx(0.5)
        and v.score() == 0.5
        for v in both
    )
    rnd = judge.compare_many(PAIRS, votes=1, swap="random", seed=3)
    assert [v.winner for v in rnd] == [int(show_first_b(3, i)) for i in range(len(PAIRS))]
    # item_ids pins the coin to a stable id (a resumed run sees the same orders).
    sub = judge.compare_many(PAIRS[5:8], swap="random", seed=3, item_ids=[5, 6, 7])
    assert [v.orders for v in sub] == [v.orders for v in rnd[5:8]]


def test_seeded_order_is_reproducible_across_processes():
    here = [show_first_b(42, i) for i in range(64)] + [derive_seed(42, 7)]
    code = (
        "from rrm_jax.core.seeds import show_first_b, derive_seed;"
        "print([show_first_b(42, i) for i in range(64)] + [derive_seed(42, 7)])"
    )
    for hashseed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": hashseed, "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
        )
        assert out.stdout.strip() == str(here)
    assert 16 < sum(here[:64]) < 48


def test_vote_counting_invalid_and_soft_fallback():
    # Sample k of each prompt: "1", "2", "3" (invalid), "1", "1" -> shown votes 3 x first, 1 x second, 1 invalid.
    seq = ["1", "2", "3", "1", "1"]
    judge, _ = make_judge(lambda f, s, k: (seq[k], False, 0.9), probes=False)
    v = judge.compare("q", "A", "B", votes=5, swap="none")
    assert (v.winner, v.votes_a, v.votes_b, v.invalid, v.forced) == (0, 3, 1, 1, 0)
    assert v.sample_verdicts == [0, 1, None, 0, 0]
    assert v.soft == pytest.approx(3 / 4)  # no probes: each valid vote counts 1/0, invalid ones nothing
    judge, _ = make_judge(lambda f, s, k: (seq[k], False, 0.9))
    v = judge.compare("q", "A", "B", votes=5, swap="none")
    # With probes the unforced verdict digit is located; invalid "3" has no digit to read.
    assert v.soft == pytest.approx(0.9)
    vb = judge.compare_many([("q2", "A", "B")], votes=5, swap="both")[0]
    assert vb.sample_verdicts == [0, 1, None, 0, 0, 1, 0, None, 1, 1]  # 2nd order's votes mapped back
    assert (vb.votes_a, vb.votes_b) == (4, 4) and vb.soft == pytest.approx(0.5)


def test_forced_verdict_soft_score():
    # Budget-forced samples: P("1") at the digit after the forced suffix; the sampled digit is "2" regardless.
    judge, _ = make_judge(lambda f, s, k: ("2", True, 0.8))
    v = judge.compare("q", "A", "B", votes=2, swap="none")
    assert (v.winner, v.votes_b, v.forced) == (1, 2, 2) and v.soft == pytest.approx(0.8)
    v = judge.compare_many([("q", "A", "B")], swap="both")[0]
    assert v.orders == ["ab", "ba"] and v.soft == pytest.approx((0.8 + 0.2) / 2)
    # A forced sample whose digit is invalid still yields a soft preference.
    judge, _ = make_judge(lambda f, s, k: ("x", True, 0.3))
    v = judge.compare("q", "A", "B", swap="none")
    assert v.winner is None and v.invalid == 1 and v.soft == pytest.approx(0.3)


def test_adaptive_voting_stops_early_and_matches_majority():
    alternating = ["1", "2", "1", "2", "1", "2", "1"]

    def policy(first, second, k):
        if "SPLIT" in first + second:
            return alternating[k], False, 0.5
        return ("1" if "GOOD" in first else "2"), False, 0.5

    judge, gen = make_judge(policy)
    pairs = [("q", "GOOD a", "b"), ("q", "SPLIT a", "SPLIT b"), ("q2", "x", "GOOD y")]
    vs = judge.compare_many(pairs, votes=5, swap="none", adaptive=True)
    # Round 1 draws floor(5/2)+1 = 3 for everyone; the unanimous items are settled (3 > 2 remaining).
    # SPLIT: 1,2,1 -> margin 1 with 2 left -> 1 more ("2": 2-2, 1 left) -> 1 more ("1": 3-2, done).
    assert [c[1].n for c in gen.calls] == [3, 1, 1]
    assert [len(c[0]) for c in gen.calls] == [3, 1, 1]
    assert [v.samples_drawn for v in vs] == [3, 5, 3]
    assert [(v.votes_a, v.votes_b) for v in vs] == [(3, 0), (3, 2), (0, 3)]
    assert judge.last_stats["samples_drawn"] == 11 and judge.last_stats["samples_max"] == 15
    assert adaptive_savings(vs, 5) == pytest.approx(1 - 11 / 15)
    full = make_judge(policy)[0].compare_many(pairs, votes=5, swap="none")
    assert [v.winner for v in full] == [v.winner for v in vs]
    # swap="both": votes per order; round 1 draws 3 per order (6 votes); unanimous judge -> 6 > 4 remaining.
    judge, gen = make_judge(prefers_good)
    v = judge.compare_many([("q", "GOOD", "bad")], votes=5, swap="both", adaptive=True)[0]
    assert v.samples_drawn == 6 and (v.votes_a, v.votes_b) == (6, 0) and len(gen.calls) == 1


def test_truncation_policy():
    long_a = "HEAD-A " + "a" * 3000 + " TAIL-A"
    judge, gen = make_judge(prefers_good, max_prompt_tokens=2600)
    q, a, b, truncated = judge.fit("short q", long_a, "GOOD short b")
    assert truncated and b == "GOOD short b" and q == "short q"
    assert a.startswith("HEAD-A") and a.endswith("TAIL-A") and TRUNCATION_MARKER in a
    assert len(FakeModel.tokenizer.encode(judge.render(q, a, b))) <= 2600
    v = judge.compare("short q", long_a, "GOOD short b", swap="both")
    assert v.truncated and v.winner == 1
    assert all(len(FakeModel.tokenizer.encode(p)) <= 2600 for p in gen.calls[-1][0])
    assert not judge.compare("q", "a", "GOOD b").truncated
    with pytest.raises(ValueError, match="max_prompt_tokens=500"):
        make_judge(prefers_good, max_prompt_tokens=500)[0].fit("q", long_a, "b")


def test_rank_and_best_of_n_through_the_judge():
    def by_score(first, second, k):  # candidates "score=<int>": the higher one is better
        sf, ss = int(first.split("=")[1]), int(second.split("=")[1])
        return ("1" if sf > ss else "2"), False, 0.5

    cands = [f"score={s}" for s in (3, 9, 1, 7, 4, 8, 2)]
    judge, gen = make_judge(by_score)
    best, r = judge.best_of_n("q", cands, votes=3, seed=1)
    assert best == 1 and r.comparisons == len(cands) - 1 and r.samples == 3 * (len(cands) - 1)
    assert len(gen.calls) == r.rounds == 3 and all(c[1].n == 3 for c in gen.calls)
    assert r.tokens == gen.tokens
    r = judge.rank("q", cands, strategy="elo", votes=1)
    assert r.order == [1, 5, 3, 4, 0, 6, 2] and r.comparisons == 21


def test_bad_inputs():
    judge, _ = make_judge(prefers_good)
    with pytest.raises(ValueError, match="swap"):
        judge.compare("q", "a", "b", swap="sometimes")
    with pytest.raises(ValueError, match="votes"):
        judge.compare("q", "a", "b", votes=0)
    with pytest.raises(TypeError, match="pair 1"):
        judge.compare_many([("q", "a", "b"), ("q", None, "b")])
    with pytest.raises(ValueError, match="item_ids"):
        judge.compare_many([("q", "a", "b")], item_ids=[1, 2])
    with pytest.raises(ValueError, match="tokenizer"):
        Judge(type("M", (), {"tokenizer": None})(), sampling=SamplingConfig(), generate=lambda *a, **k: [])


def test_end_to_end_tiny_model_with_thinking_budget(shared_dir, mesh1):
    import rrm_jax
    from rrm_jax.core.config import resolve_config
    from rrm_jax.core.tokenizers import load_tokenizer

    tok = load_tokenizer(shared_dir / "tokenizers" / "deepseek-r1-distill-qwen")
    cfg = dataclasses.replace(resolve_config("tiny"), vocab_size=151936, eos_token_id=151643)
    model = rrm_jax.init(cfg, seed=0, mesh=mesh1, tokenizer=tok)
    assert verdict_digit_ids(tok) == (16, 17)
    judge = Judge(model, sampling=SamplingConfig(max_new_tokens=14, max_think_tokens=6, temperature=0.6))
    pairs = [
        ("What is 2+2?", "4", "5"),
        ("Name a colour.", "Blue.", "A banana is a colour."),
        ("Say hi.", "hi", "Hello there!"),
    ]
    vs = judge.compare_many(pairs, votes=2, swap="random", seed=0)
    for v in vs:
        assert v.samples_drawn == 2 and len(v.reasonings) == 2 and v.tokens > 0 and 0.0 <= v.soft <= 1.0
        assert v.votes_a + v.votes_b + v.invalid == 2
        # Random weights never close </think> in 6 tokens: the budget forces every verdict.
        assert v.forced == 2
        assert all("</think>\n\n\\boxed{Assistant " in t for t in v.reasonings)
        assert v.soft not in (0.0, 0.5, 1.0)  # read from the digit probabilities, not a vote
