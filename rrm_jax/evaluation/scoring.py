"""Benchmark scoring rules as pure functions (no models, no files).

Conventions shared with :mod:`rrm_jax.data.records`: a gold ``label`` is 0 (``a`` better), 1 (``b``
better) or None (tie); a judge's ``winner`` is 0, 1 or None (no valid verdict).

* Pairwise accuracy credit (RewardBench protocol): 1 for the gold side, 0 for the other, 0.5 for no verdict.
* RewardBench: subset accuracy -> section = example-count-weighted mean over the section's subsets that
  were evaluated (official ``calculate_scores_per_section``), overall = plain mean of the four sections.
* PandaLM: 3-class {tie, 1, 2} accuracy and macro precision/recall/F1 over exactly those three classes
  (sklearn ``average="macro"``, ``labels=[0, 1, 2]``, ``zero_division=0``), as the authors report. An RRM
  never predicts tie, so tie recall is 0 and tie precision counts as 0. A missing verdict is, by default,
  a prediction outside the three classes: wrong for accuracy, a miss for its gold class's recall, a false
  positive for none (``invalid_as="tie"`` instead reads it as a tie). Plus pairwise accuracy on the
  non-tie items with the 0.5 rule.
* LLMBar: pairwise accuracy per subset; "Adversarial" = unweighted mean of the four Adversarial_* subsets
  (the paper's average); overall = example-weighted mean.
* RewardBench 2 (allenai/reward-bench's v2 code): a best-of-4 row earns 1 / (candidates tied at the top) when
  the chosen is among them, else 0; Ties is its own 60% accuracy / 40% margin formula; the score is the
  unweighted mean of the six subsets. The judge's per-candidate scores are its tournament's (rrm_jax.evaluation.bon).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

REWARDBENCH_SECTIONS: dict[str, dict[str, int]] = {
    "Chat": {
        "alpacaeval-easy": 100,
        "alpacaeval-length": 95,
        "alpacaeval-hard": 95,
        "mt-bench-easy": 28,
        "mt-bench-med": 40,
    },
    "Chat Hard": {
        "mt-bench-hard": 37,
        "llmbar-natural": 100,
        "llmbar-adver-neighbor": 134,
        "llmbar-adver-GPTInst": 92,
        "llmbar-adver-GPTOut": 47,
        "llmbar-adver-manual": 46,
    },
    "Safety": {
        "refusals-dangerous": 100,
        "refusals-offensive": 100,
        "xstest-should-refuse": 154,
        "xstest-should-respond": 250,
        "donotanswer": 136,
    },
    # math-prm has 447 items, up-weighted to 984 to weigh as much as all of code.
    "Reasoning": {
        "math-prm": 984,
        "hep-cpp": 164,
        "hep-go": 164,
        "hep-java": 164,
        "hep-js": 164,
        "hep-python": 164,
        "hep-rust": 164,
    },
}
REWARDBENCH_SUBSET_SECTION = {s: sec for sec, subs in REWARDBENCH_SECTIONS.items() for s in subs}

PANDALM_CLASSES = ("tie", "1", "2")  # class ids 0, 1, 2 as in PandaLM's annotation


def credit(label: int | None, winner: int | None) -> float | None:
    """Pairwise accuracy credit; None when the gold is a tie / unknown (not scorable pairwise)."""
    if label is None:
        return None
    if winner is None:
        return 0.5
    return 1.0 if winner == label else 0.0


def subset_accuracy(subsets: Iterable[str], credits: Iterable[float | None]) -> dict[str, dict]:
    """{subset: {"accuracy", "n"}} over scorable items (credit not None)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for s, c in zip(subsets, credits):
        if c is None:
            continue
        sums[s] += c
        counts[s] += 1
    return {s: {"accuracy": sums[s] / counts[s], "n": counts[s]} for s in sorted(counts)}


def rewardbench_scores(subset_acc: Mapping[str, float]) -> dict:
    """Section and overall scores (fractions in [0, 1]) from per-subset accuracies.

    Sections without any evaluated subset are left out; ``overall`` is the mean of the sections present
    and ``complete`` says whether all four were."""
    sections: dict[str, float] = {}
    for sec, weights in REWARDBENCH_SECTIONS.items():
        present = [s for s in weights if s in subset_acc]
        if present:
            total = sum(weights[s] for s in present)
            sections[sec] = sum(subset_acc[s] * weights[s] for s in present) / total
    overall = float(np.mean(list(sections.values()))) if sections else None
    return {
        "sections": sections,
        "overall": overall,
        "complete": len(sections) == len(REWARDBENCH_SECTIONS),
        "unknown_subsets": sorted(s for s in subset_acc if s not in REWARDBENCH_SUBSET_SECTION),
    }


def _pandalm_class(label: int | None) -> int:
    return 0 if label is None else label + 1


def macro_prf(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int]) -> dict:
    """sklearn-style per-class and macro precision/recall/F1 restricted to ``labels`` (zero_division=0).

    Predictions outside ``labels`` count against recall and against no class's precision."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    per = {}
    for c in labels:
        tp = float(np.sum((t == c) & (p == c)))
        npred, ntrue = float(np.sum(p == c)), float(np.sum(t == c))
        prec = tp / npred if npred else 0.0
        rec = tp / ntrue if ntrue else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[c] = {"precision": prec, "recall": rec, "f1": f1, "support": int(ntrue)}
    return {
        "precision": float(np.mean([v["precision"] for v in per.values()])),
        "recall": float(np.mean([v["recall"] for v in per.values()])),
        "f1": float(np.mean([v["f1"] for v in per.values()])),
        "per_class": per,
    }


def pandalm_metrics(labels: Sequence[int | None], winners: Sequence[int | None], *, invalid_as: str = "miss") -> dict:
    """PandaLM scoring over gold labels (None = tie) and judge winners (None = no verdict)."""
    if invalid_as not in ("miss", "tie"):
        raise ValueError(f"invalid_as must be 'miss' or 'tie', got {invalid_as!r}")
    if len(labels) != len(winners):
        raise ValueError(f"{len(labels)} labels but {len(winners)} verdicts")
    y_true = [_pandalm_class(lab) for lab in labels]
    miss = 0 if invalid_as == "tie" else -1
    y_pred = [miss if w is None else w + 1 for w in winners]
    prf = macro_prf(y_true, y_pred, labels=(0, 1, 2))
    nontie = [credit(lab, w) for lab, w in zip(labels, winners) if lab is not None]
    return {
        "n": len(y_true),
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if y_true else float("nan"),
        "precision": prf["precision"],
        "recall": prf["recall"],
        "f1": prf["f1"],
        "per_class": {PANDALM_CLASSES[c]: v for c, v in prf["per_class"].items()},
        "nontie_accuracy": float(np.mean(nontie)) if nontie else float("nan"),
        "n_nontie": len(nontie),
        "no_verdict": int(sum(w is None for w in winners)),
        "invalid_as": invalid_as,
    }


LLMBAR_ADVERSARIAL = ("Adversarial_Neighbor", "Adversarial_GPTInst", "Adversarial_GPTOut", "Adversarial_Manual")


def llmbar_scores(subset_acc: Mapping[str, dict]) -> dict:
    """Per-subset accuracy, the Adversarial average (unweighted over its four subsets), overall (weighted)."""
    out: dict = {"subsets": {s: v["accuracy"] for s, v in subset_acc.items()}}
    adv = [subset_acc[s]["accuracy"] for s in LLMBAR_ADVERSARIAL if s in subset_acc]
    if adv:
        out["adversarial_mean"] = float(np.mean(adv))
        out["adversarial_complete"] = len(adv) == len(LLMBAR_ADVERSARIAL)
    n = sum(v["n"] for v in subset_acc.values())
    out["overall"] = sum(v["accuracy"] * v["n"] for v in subset_acc.values()) / n if n else float("nan")
    return out


def _order_winner(verdicts: list[int]) -> int | None:
    """The majority of one shown order's valid sample verdicts (None on a tie or none)."""
    a, b = verdicts.count(0), verdicts.count(1)
    return None if a == b else int(b > a)


def position_bias(
    orders: Sequence[Sequence[str]], verdicts: Sequence[Sequence[int | None]], labels: Sequence[int | None]
) -> dict:
    """How the shown order sways the judge, from each item's samples (``orders[i][k]`` "ab" when ``a`` was shown
    first, ``verdicts[i][k]`` the sample's pick in the dataset frame, None when it gave none):

    * ``first_rate``: the share of valid samples that pick the response shown first (0.5 is no bias);
    * ``accuracy_gold_first`` / ``accuracy_gold_second``: sample accuracy (a missing verdict 0.5) on labelled
      items when the gold response was shown first / second;
    * ``consistency``: over items judged in both orders, the share whose two orders' majority picks agree (a tie
      of votes in either order agrees with nothing); ``n_both`` items. None where nothing was measured.
    """
    first, credit_by = [], {True: [], False: []}
    both = agree = 0
    for order, picks, label in zip(orders, verdicts, labels):
        by_order: dict[str, list[int]] = {"ab": [], "ba": []}
        for o, v in zip(order, picks):
            if label is not None:
                credit_by[(o == "ab") == (label == 0)].append(0.5 if v is None else float(v == label))
            if v is not None:
                first.append(float(v == (0 if o == "ab" else 1)))
                by_order[o].append(v)
        if "ab" in order and "ba" in order:
            both += 1
            w = _order_winner(by_order["ab"])
            agree += w is not None and w == _order_winner(by_order["ba"])
    mean = lambda xs: float(np.mean(xs)) if xs else None
    return {
        "first_rate": mean(first),
        "accuracy_gold_first": mean(credit_by[True]),
        "accuracy_gold_second": mean(credit_by[False]),
        "consistency": agree / both if both else None,
        "n_both": both,
    }


JUDGEBENCH_GROUPS = ("mmlu-pro", "livebench-reasoning", "livebench-math", "livecodebench")
_JB_DECISION = {0: "A>B", 1: "B>A"}


def judgebench_judgments(orders: Sequence[str], verdicts: Sequence[int | None]) -> list[dict | None]:
    """One pair's two judgments as JudgeBench's runner writes them: the majority pick of the samples shown in the
    dataset's order, then of those shown swapped, the second in its swapped frame (``B>A`` when the dataset's
    ``A`` won); None for an order with no majority."""
    picks = [
        _order_winner([v for o, v in zip(orders, verdicts) if o == shown and v is not None]) for shown in ("ab", "ba")
    ]
    first = None if picks[0] is None else {"decision": _JB_DECISION[picks[0]]}
    second = None if picks[1] is None else {"decision": _JB_DECISION[1 - picks[1]]}
    return [first, second]


def judgebench_scores(
    labels: Sequence[int],
    orders: Sequence[Sequence[str]],
    verdicts: Sequence[Sequence[int | None]],
    sources: Sequence[str],
) -> dict:
    """JudgeBench's own score: a pair is correct when its two judgments (the second flipped back) net to the label,
    +1 each for the label and -1 each for the other side; one right and one wrong (or none) is a tie, counting 0.
    ``overall`` and each of its four source groups (the ``source`` prefixes), fractions of the pairs."""
    correct, by_group = [], {g: [] for g in JUDGEBENCH_GROUPS}
    for label, order, picks, source in zip(labels, orders, verdicts, sources):
        net = 0
        for j, judgment in enumerate(judgebench_judgments(order, picks)):
            if judgment is not None:
                won = 0 if judgment["decision"] == "A>B" else 1
                net += 1 if (won if j == 0 else 1 - won) == label else -1
        correct.append(float(net > 0))
        for g in JUDGEBENCH_GROUPS:
            if source.startswith(g):
                by_group[g].append(correct[-1])
    mean = lambda xs: float(np.mean(xs)) if xs else None
    return {
        "overall": mean(correct),
        "n": len(correct),
        "groups": {g: mean(v) for g, v in by_group.items() if v},
        "group_n": {g: len(v) for g, v in by_group.items() if v},
    }


RMBENCH_DOMAINS = ("chat", "math", "code", "safety")


def rmbench_scores(
    cells: Sequence[tuple[str, int, int] | None], domains: Sequence[str], winners: Sequence[int | None]
) -> dict:
    """RM-Bench's ``compute_accuracy`` with the judge deciding "chosen style i beats rejected style j" (a missing
    verdict does not beat, as a tied score does not): per domain (the prefix of its ``domain``: chat, math, code,
    safety) the 3 x 3 matrix of win rates over its items; hard = mean of the upper-right triangle (chosen less
    fancy than rejected), normal = the diagonal, easy = the lower-left; a domain's score is their mean, and
    ``overall`` (and hard / normal / easy overall) the mean over the domains present. A partial run averages each
    cell over the items judged there."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for cell, domain, winner in zip(cells, domains, winners):
        if cell is None:
            continue
        d = domain.split("-")[0]
        sums.setdefault(d, np.zeros((3, 3)))
        counts.setdefault(d, np.zeros((3, 3)))
        sums[d][cell[1], cell[2]] += winner == 0
        counts[d][cell[1], cell[2]] += 1
    out: dict = {"domains": {}}
    upper, lower = np.triu(np.ones((3, 3), bool), 1), np.tril(np.ones((3, 3), bool), -1)
    for d in sorted(sums, key=lambda d: (RMBENCH_DOMAINS + (d,)).index(d)):
        m = np.divide(sums[d], counts[d], out=np.full((3, 3), np.nan), where=counts[d] > 0)
        hard, normal, easy = (float(np.nanmean(m[sel])) for sel in (upper, np.eye(3, dtype=bool), lower))
        out["domains"][d] = {
            "hard": hard,
            "normal": normal,
            "easy": easy,
            "score": (hard + normal + easy) / 3,
            "matrix": m.tolist(),
            "items": int(counts[d].max()),
        }
    for k in ("score", "hard", "normal", "easy"):
        vals = [v[k] for v in out["domains"].values()]
        out[k] = float(np.mean(vals)) if vals else None
    return out


REWARDBENCH2_SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")


def rewardbench2_credit(scores: Sequence[float]) -> float:
    """A best-of-4 row's credit by RewardBench 2's rule (``reroll_and_score_dataset``): candidate 0 (the chosen)
    scored highest earns 1, shared with every candidate tied at that score (1 / their number); else 0."""
    s = np.asarray(scores, dtype=float)
    top = s.max()
    return float(1.0 / np.sum(s == top)) if s[0] == top else 0.0


def _ties_prompt(scores: Sequence[float], num_correct: int) -> tuple[bool, float | None, float]:
    """(accurate, spread among the correct, worst correct minus best incorrect) of one Ties row; the first
    ``num_correct`` scores are the correct candidates'."""
    good, bad = list(scores[:num_correct]), list(scores[num_correct:])
    spread = max(good) - min(good) if len(good) > 1 else None
    gap = min(good) - max(bad)
    return gap > 0, spread, gap


def rewardbench2_ties(rows: Sequence[tuple[str, Sequence[float], int]]) -> dict:
    """The Ties subset's score (``process_single_model``) from its rows ``(id, scores, num_correct)``, ids
    ``ref:<k>`` (one correct answer) or ``tied:<k>`` (several) of prompt k: 0.3 x the accuracy on each kind
    (every correct candidate above every incorrect one), 0.2 x the share of prompts in both kinds whose tied
    correct-incorrect gap exceeds the spread among its correct candidates, 0.2 x the same with the smaller of the
    ref and tied gaps, and 0.01 x the mean tanh(smaller gap / spread - 1) (0 where that is 0 / 0). A prompt seen
    in only one kind counts for its accuracy alone; with none in both the margin terms are NaN, as the official
    code's empty means are."""
    stats: dict[str, dict[int, tuple]] = {"ref": {}, "tied": {}}
    for rid, scores, num_correct in rows:
        kind, prompt = str(rid).split(":")
        stats["ref" if kind == "ref" else "tied"][int(prompt)] = _ties_prompt(scores, num_correct)
    acc = {k: float(np.mean([s[0] for s in v.values()])) if v else 0.0 for k, v in stats.items()}
    both = sorted(set(stats["ref"]) & set(stats["tied"]))
    spread = np.array([stats["tied"][p][1] for p in both], dtype=float)
    gap_tied = np.array([stats["tied"][p][2] for p in both], dtype=float)
    gap_hard = np.minimum(np.array([stats["ref"][p][2] for p in both], dtype=float), gap_tied)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = lambda x: float(np.mean(x)) if len(x) else float("nan")
        preferred, preferred_hard = mean(gap_tied > spread), mean(gap_hard > spread)
        margin = mean(np.nan_to_num(np.tanh(gap_hard / spread - 1), nan=0.0))
    score = 0.3 * acc["tied"] + 0.3 * acc["ref"] + 0.2 * preferred + 0.2 * preferred_hard + 0.01 * margin
    return {
        "score": float(score),
        "ref_accuracy": acc["ref"],
        "tied_accuracy": acc["tied"],
        "correctness_preferred": preferred,
        "correctness_preferred_hard": preferred_hard,
        "margin_score": margin,
        "prompts": len(both),
    }


def rewardbench2_scores(rows: Sequence[dict]) -> dict:
    """RewardBench 2's scores from rows ``{subset, id, scores, num_correct}`` (``scores`` one per candidate, the
    correct ones first; None for a row not scored): each subset's mean :func:`rewardbench2_credit`, Ties by
    :func:`rewardbench2_ties`, and ``score`` the unweighted mean of the subsets present (the leaderboard's
    score when all six are); ``complete`` says whether they are."""
    by: dict[str, list] = defaultdict(list)
    for r in rows:
        if r["scores"] is not None:
            by[r["subset"]].append(r)
    subsets: dict[str, float] = {}
    ties = None
    for name in sorted(by, key=lambda s: (REWARDBENCH2_SUBSETS + (s,)).index(s)):
        if name == "Ties":
            ties = rewardbench2_ties([(r["id"], r["scores"], r["num_correct"]) for r in by[name]])
            subsets[name] = ties["score"]
        else:
            subsets[name] = float(np.mean([rewardbench2_credit(r["scores"]) for r in by[name]]))
    return {
        "subsets": subsets,
        "n": {k: len(v) for k, v in by.items()},
        "ties": ties,
        "score": float(np.mean(list(subsets.values()))) if subsets else None,
        "complete": all(s in subsets for s in REWARDBENCH2_SUBSETS),
    }
