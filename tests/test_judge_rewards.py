"""Judge rewards for policy GRPO (rl.judge_rewards) with a scripted judge whose preferences are known: the
judge prefers the larger number, so every tournament's outcome is worked out by hand."""

import numpy as np
import pytest

from fakes import FakeCompletion, FakeGenerate, FakeModel
from rrm_jax.judge.judge import Judge
from rrm_jax.sampler import SamplingConfig
from rrm_jax.training.rl.judge_rewards import JudgeReward, after_think


def larger_wins(first, second, k):
    return ("1" if float(first) > float(second) else "2"), False, 0.5


def make(kind, **kw):
    gen = FakeGenerate(FakeModel.tokenizer, larger_wins)
    judge = Judge(FakeModel(), sampling=SamplingConfig(max_new_tokens=64, temperature=0.6), generate=gen)
    return JudgeReward(judge, kind, **kw), gen


def call(reward, groups, step=0, **fields):
    texts = [t for g in groups for t in g]
    comps = [FakeCompletion([], t, np.zeros(0)) for t in texts]
    size = len(groups[0])
    batch = dict(
        query=[f"q{i // size}" for i in range(len(texts))],
        group=np.repeat(np.arange(len(groups)), size),
        step=step,
        **fields,
    )
    return reward(["p"] * len(texts), comps, batch)


def test_elo_ranks_each_group_standardised_and_duplicates_share():
    reward, gen = make("judge_elo")
    r = call(reward, [["3", "5", "5", "1"], ["2", "9", "4", "7"]])
    assert len(gen.calls) == 1  # both groups' round-robins: ONE sampler call
    g1, g2 = r[:4], r[4:]
    assert g1[1] == g1[2] > g1[0] > g1[3]  # 5 = 5 > 3 > 1
    assert list(np.argsort(g2)) == [0, 2, 3, 1]  # 2 < 4 < 7 < 9
    for g in (g1, g2):  # standardised over the group's members
        assert abs(g.mean()) < 1e-5 and abs(g.std() - 1) < 1e-4
    # 3 distinct texts -> 3 comparisons, 4 -> 6: duplicates are judged once
    assert reward.last_stats["judge_comparisons"] == 3 + 6 and reward.last_stats["judge_distinct"] == 3.5


def test_knockout_rewards_rounds_survived_one_call_per_round():
    reward, gen = make("judge_knockout")
    r = call(reward, [["4", "1", "3", "2"], ["8", "6", "7", "5"]])
    assert len(gen.calls) == 2  # log2(4) rounds, every group's matches of a round in one call
    for g, best in ((r[:4], 0), (r[4:], 0)):
        assert g[best] == 3  # the champion: 2 rounds won + 1
        assert sorted(g) == [0, 0, 1, 3]  # two first-round losers, one finalist
    # the finalist is the best of the other half of the bracket, which the larger number always wins
    assert reward.last_stats["judge_comparisons"] == 6


def test_knockout_with_byes_and_single_distinct_group():
    reward, gen = make("judge_knockout")
    r = call(reward, [["5", "2", "9"], ["4", "4", "4"]])
    assert r[2] == 3 and r[0] >= 1 and r[1] <= 1  # 3 players: one bye, 9 is champion after 2 rounds
    assert list(r[3:]) == [0, 0, 0]  # one distinct answer: no match, all tie


def test_reference_and_unjudgeable_responses():
    reward, gen = make("judge_reference", show="answer", extract="math")
    groups = [["\\boxed{5}", "\\boxed{2}", "no answer", "\\boxed{5}"]]
    r = call(reward, groups, reference=["3"] * 4)
    assert list(r) == [1, -1, -2, 1]  # beats 3, loses to 3, nothing to judge (min - 1), duplicate of the first
    assert reward.last_stats["judge_comparisons"] == 2
    prompts = [p for p, _ in gen.calls[0][0:1]][0]
    assert all("no answer" not in p for p in prompts)


def test_same_step_same_rewards_and_after_think():
    def noisy(first, second, k):
        return ("1" if (hash((first, second, k)) % 3) else "2"), False, 0.5

    gen = FakeGenerate(FakeModel.tokenizer, noisy)
    judge = Judge(FakeModel(), sampling=SamplingConfig(max_new_tokens=64, temperature=0.6), generate=gen)
    groups = [["1", "2", "3", "4"]]
    a = call(JudgeReward(judge, "judge_knockout"), groups, step=3)
    gen.seen.clear()
    b = call(JudgeReward(judge, "judge_knockout"), groups, step=3)
    assert np.array_equal(a, b)  # a resumed run re-judges a step exactly as the uninterrupted run did
    assert after_think("x<think>scratch</think>\n\n final ") == "final" and after_think(" plain ") == "plain"


def test_bad_options_are_named():
    judge = Judge(
        FakeModel(), sampling=SamplingConfig(max_new_tokens=8), generate=FakeGenerate(FakeModel.tokenizer, larger_wins)
    )
    with pytest.raises(ValueError, match="judge_elo, judge_knockout, judge_reference"):
        JudgeReward(judge, "judge_best")
    with pytest.raises(ValueError, match="needs extract"):
        JudgeReward(judge, "judge_elo", show="answer")
