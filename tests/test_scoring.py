"""Scoring rules against hand-computed values."""

import math

import pytest

from rrm_jax.evaluation import scoring


def test_credit_rule():
    assert scoring.credit(0, 0) == 1.0
    assert scoring.credit(0, 1) == 0.0
    assert scoring.credit(1, 1) == 1.0
    assert scoring.credit(1, 0) == 0.0
    assert scoring.credit(1, None) == 0.5  # no verdict: half credit (official protocol)
    assert scoring.credit(None, 0) is None  # tie gold: not scorable pairwise


def test_rewardbench_weights_match_reference_table():
    w = scoring.REWARDBENCH_SECTIONS
    assert w["Reasoning"]["math-prm"] == 984
    assert sum(w["Chat"].values()) == 358
    assert sum(w["Chat Hard"].values()) == 456
    assert sum(w["Safety"].values()) == 740
    assert sum(w["Reasoning"].values()) == 984 + 6 * 164
    assert len(scoring.REWARDBENCH_SUBSET_SECTION) == 23


def test_rewardbench_sections_weighted_by_example_counts():
    acc = {
        "alpacaeval-easy": 1.0,
        "alpacaeval-length": 0.5,
        "mt-bench-med": 0.25,
        "llmbar-natural": 0.8,
        "llmbar-adver-neighbor": 0.5,
        "donotanswer": 0.9,
        "math-prm": 0.6,
        "hep-go": 1.0,
    }
    r = scoring.rewardbench_scores(acc)
    chat = (100 * 1.0 + 95 * 0.5 + 40 * 0.25) / (100 + 95 + 40)  # 157.5 / 235
    hard = (100 * 0.8 + 134 * 0.5) / (100 + 134)  # 147 / 234
    safety = 0.9
    reasoning = (984 * 0.6 + 164 * 1.0) / (984 + 164)  # 754.4 / 1148
    assert r["sections"]["Chat"] == pytest.approx(chat)
    assert r["sections"]["Chat Hard"] == pytest.approx(hard)
    assert r["sections"]["Safety"] == pytest.approx(safety)
    assert r["sections"]["Reasoning"] == pytest.approx(reasoning)
    assert r["overall"] == pytest.approx((chat + hard + safety + reasoning) / 4)
    assert r["overall"] == pytest.approx(0.7138901878, abs=1e-9)
    assert r["complete"] and r["unknown_subsets"] == []


def test_rewardbench_partial_and_unknown_subsets():
    r = scoring.rewardbench_scores({"alpacaeval-easy": 0.5, "hep-cpp": 1.0, "my-subset": 0.0})
    assert set(r["sections"]) == {"Chat", "Reasoning"}
    assert not r["complete"]
    assert r["overall"] == pytest.approx(0.75)
    assert r["unknown_subsets"] == ["my-subset"]


def test_pandalm_macro_prf_with_ties_and_missing_verdict():
    # gold classes (0 tie, 1, 2): [0,0,1,1,1,2,2,2,2]; predictions: [1,2,1,1,2,2,2,miss,1]
    labels = [None, None, 0, 0, 0, 1, 1, 1, 1]
    winners = [0, 1, 0, 0, 1, 1, 1, None, 0]
    m = scoring.pandalm_metrics(labels, winners)
    # tie: never predicted -> P 0, R 0.  "1": 2 of 4 predicted right, 2 of 3 found.  "2": 2/4, 2/4.
    assert m["per_class"]["tie"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["per_class"]["1"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["1"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["1"]["f1"] == pytest.approx(4 / 7)
    assert m["per_class"]["2"]["f1"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(7 / 18)
    assert m["f1"] == pytest.approx(5 / 14)
    assert m["accuracy"] == pytest.approx(4 / 9)
    # non-tie items 2..8 credit 1,1,0,1,1,0.5,0
    assert m["nontie_accuracy"] == pytest.approx(4.5 / 7)
    assert m["n_nontie"] == 7 and m["no_verdict"] == 1


def test_pandalm_invalid_as_tie_option():
    labels, winners = [None, 0], [None, None]
    miss = scoring.pandalm_metrics(labels, winners)
    tie = scoring.pandalm_metrics(labels, winners, invalid_as="tie")
    assert miss["accuracy"] == 0.0
    assert tie["accuracy"] == 0.5
    assert tie["per_class"]["tie"]["precision"] == 0.5  # 2 tie predictions, 1 right
    assert miss["nontie_accuracy"] == tie["nontie_accuracy"] == 0.5
    with pytest.raises(ValueError):
        scoring.pandalm_metrics(labels, winners, invalid_as="coin")
    with pytest.raises(ValueError, match="2 labels but 1"):
        scoring.pandalm_metrics(labels, [0])


def test_subset_accuracy_and_llmbar():
    subsets = ["Natural"] * 4 + ["Adversarial_Neighbor"] * 2 + ["Adversarial_Manual"] * 2 + ["x"]
    credits = [1, 1, 0, 0.5, 1, 0, 0, 0, None]
    acc = scoring.subset_accuracy(subsets, credits)
    assert acc == {
        "Adversarial_Manual": {"accuracy": 0.0, "n": 2},
        "Adversarial_Neighbor": {"accuracy": 0.5, "n": 2},
        "Natural": {"accuracy": 0.625, "n": 4},
    }
    lb = scoring.llmbar_scores(acc)
    assert lb["adversarial_mean"] == pytest.approx(0.25)
    assert lb["adversarial_complete"] is False
    assert lb["overall"] == pytest.approx((2.5 + 1 + 0) / 8)
    assert math.isnan(scoring.llmbar_scores({})["overall"])


def test_position_bias_equals_a_numpy_derivation_on_random_verdicts():
    """Issue 25: the position figures of every pairwise summary, re-derived with array maths from their
    definitions on random runs: one or several votes, one order or both, missing verdicts, ties and
    unlabelled items."""
    import numpy as np

    rng = np.random.default_rng(0)
    orders, verdicts, labels = [], [], []
    for _ in range(300):
        k = int(rng.integers(1, 5))
        orders.append([("ab", "ba")[int(b)] for b in rng.integers(0, 2, k)])
        verdicts.append([None if rng.random() < 0.15 else int(v) for v in rng.integers(0, 2, k)])
        labels.append(None if rng.random() < 0.1 else int(rng.integers(0, 2)))
    got = scoring.position_bias(orders, verdicts, labels)

    o = np.array([x == "ab" for xs in orders for x in xs])  # a shown first
    v = np.array([-1 if x is None else x for xs in verdicts for x in xs])
    lab = np.repeat([-1 if x is None else x for x in labels], [len(xs) for xs in orders])
    valid = v >= 0
    first = np.where(o, v == 0, v == 1)
    assert got["first_rate"] == pytest.approx(first[valid].mean())
    credit = np.where(valid, (v == lab).astype(float), 0.5)
    gold_first = (lab >= 0) & (o == (lab == 0))
    gold_second = (lab >= 0) & (o != (lab == 0))
    assert got["accuracy_gold_first"] == pytest.approx(credit[gold_first].mean())
    assert got["accuracy_gold_second"] == pytest.approx(credit[gold_second].mean())
    item = np.repeat(np.arange(len(orders)), [len(xs) for xs in orders])
    agree = both = 0
    for i in range(len(orders)):
        picks = []
        for shown in (True, False):
            sel = (item == i) & (o == shown) & valid
            a, b = np.sum(v[sel] == 0), np.sum(v[sel] == 1)
            picks.append(None if a == b else int(b > a))
        if np.any((item == i) & o) and np.any((item == i) & ~o):
            both += 1
            agree += picks[0] is not None and picks[0] == picks[1]
    assert (got["n_both"], got["consistency"]) == (both, pytest.approx(agree / both))
    assert scoring.position_bias([["ab"]], [[None]], [None]) == {
        "first_rate": None,
        "accuracy_gold_first": None,
        "accuracy_gold_second": None,
        "consistency": None,
        "n_both": 0,
    }
