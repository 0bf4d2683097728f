"""JudgeBench and RM-Bench: their readers on files in each schema, their scores against independent derivations
of the authors' written rules, and `rrm-jax eval` on each end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rrm_jax.data import DataError
from rrm_jax.data.records import read_judgebench, read_rmbench, rmbench_cell
from rrm_jax.evaluation import scoring
from rrm_jax.judge.verdict import Verdict

SOURCES = ["mmlu-pro-biology", "mmlu-pro-law", "livebench-reasoning", "livebench-math", "livecodebench"]


def _judgebench_file(path, n=10):
    rows = [
        {
            "pair_id": f"p{i}",
            "original_id": f"o{i}",
            "source": SOURCES[i % len(SOURCES)],
            "question": f"question {i}",
            "response_model": "gpt-4o-2024-05-13",
            "response_A": f"right answer {i}" if i % 3 else f"wrong answer {i}",
            "response_B": f"wrong answer {i}" if i % 3 else f"right answer {i}",
            "label": "A>B" if i % 3 else "B>A",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _rmbench_file(path, n=6):
    domains = ["chat", "math", "code", "safety-refuse", "safety-response", "chat"]
    items = [
        {
            "id": i,
            "prompt": f"prompt {i}",
            "chosen": [f"right {s} {i}" for s in ("short", "long", "**long**")],
            "rejected": [f"wrong {s} {i}" for s in ("short", "long", "**long**")],
            "domain": domains[i % len(domains)],
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(items))
    return items


# ------------------------------------------------------------------ readers
def test_judgebench_reader_keeps_the_label_and_source(tmp_path):
    rows = _judgebench_file(tmp_path / "jb.jsonl")
    pairs = read_judgebench(tmp_path / "jb.jsonl")
    assert [r.id for r in pairs.records] == [r["pair_id"] for r in rows]
    assert [r.label for r in pairs.records] == [0 if r["label"] == "A>B" else 1 for r in rows]
    assert [r.subset for r in pairs.records] == [r["source"] for r in rows]
    assert pairs.records[0].response_a == rows[0]["response_A"] and pairs.records[0].query == rows[0]["question"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "label": "A=B"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1:label: expected 'A>B' or 'B>A', got 'A=B'"):
        read_judgebench(bad)


def test_rmbench_reader_makes_the_nine_style_pairs_of_each_item(tmp_path):
    items = _rmbench_file(tmp_path / "rm.json")
    pairs = read_rmbench(tmp_path / "rm.json")
    assert len(pairs) == 9 * len(items)
    cells = [rmbench_cell(r.id) for r in pairs.records[:9]]
    assert cells == [("0", i, j) for i in range(3) for j in range(3)]
    r = pairs.records[5]  # item 0, chosen style 1 against rejected style 2
    assert (r.response_a, r.response_b, r.label, r.subset) == ("right long 0", "wrong **long** 0", 0, "chat")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**items[0], "chosen": ["only one"]}]))
    with pytest.raises(DataError, match=r"bad.json:1:chosen: expected a list of 3 responses"):
        read_rmbench(bad)
    assert len(read_rmbench(bad, on_bad="skip").problems) == 1


# ------------------------------------------------------------------ scoring, against the written rules
def _official_judgebench(pairs, groups=scoring.JUDGEBENCH_GROUPS):
    """JudgeBench's metric as its README and runner define it, on its own records ({label, judgments})."""
    flip = {"A>B": "B>A", "B>A": "A>B", None: None}

    def score(rows):
        correct = 0
        for p in rows:
            d1 = p["judgments"][0]["decision"] if p["judgments"][0] is not None else None
            d2 = flip[p["judgments"][1]["decision"] if p["judgments"][1] is not None else None]
            counter = sum((d == p["label"]) - (d == flip[p["label"]]) for d in (d1, d2))
            correct += counter > 0
        return correct / len(rows)

    out = {"overall": score(pairs)}
    for g in groups:
        rows = [p for p in pairs if p["source"].startswith(g)]
        if rows:
            out[g] = score(rows)
    return out


def test_judgebench_score_equals_its_own_metric_on_random_runs():
    rng = np.random.default_rng(1)
    labels, orders, verdicts, sources = [], [], [], []
    for i in range(400):
        votes = int(rng.integers(1, 4))
        o = ["ab"] * votes + ["ba"] * votes
        v = [None if rng.random() < 0.2 else int(rng.integers(0, 2)) for _ in o]
        labels.append(int(rng.integers(0, 2)))
        orders.append(o)
        verdicts.append(v)
        sources.append(SOURCES[i % len(SOURCES)])
    got = scoring.judgebench_scores(labels, orders, verdicts, sources)
    records = [
        {"label": "A>B" if lab == 0 else "B>A", "source": s, "judgments": scoring.judgebench_judgments(o, v)}
        for lab, o, v, s in zip(labels, orders, verdicts, sources)
    ]
    want = _official_judgebench(records)
    assert got["overall"] == pytest.approx(want["overall"])
    assert got["groups"] == pytest.approx({g: want[g] for g in scoring.JUDGEBENCH_GROUPS})
    # the judgments themselves: each order's majority, the second written in its swapped frame
    assert scoring.judgebench_judgments(["ab", "ba"], [0, 0]) == [{"decision": "A>B"}, {"decision": "B>A"}]
    assert scoring.judgebench_judgments(["ab", "ab", "ba"], [0, 1, None]) == [None, None]


def test_rmbench_score_equals_its_compute_accuracy_on_random_verdicts():
    rng = np.random.default_rng(2)
    domains = ["chat", "math", "code", "safety-refuse", "safety-response"]
    cells, doms, winners, truth = [], [], [], {}
    for item in range(60):
        d = domains[item % len(domains)]
        for i in range(3):
            for j in range(3):
                w = None if rng.random() < 0.1 else int(rng.integers(0, 2))
                cells.append((str(item), i, j))
                doms.append(d)
                winners.append(w)
                truth.setdefault(d.split("-")[0], {}).setdefault(item, np.zeros((3, 3)))[i, j] = w == 0
    got = scoring.rmbench_scores(cells, doms, winners)
    for d, items in truth.items():  # RM-Bench's README: the matrix mean, then its triangles
        acc = sum(items.values()) / len(items)
        hard = np.sum(np.triu(acc, 1)) / 3
        normal = np.mean(np.diag(acc))
        easy = np.sum(np.tril(acc, -1)) / 3
        assert (got["domains"][d]["hard"], got["domains"][d]["normal"], got["domains"][d]["easy"]) == pytest.approx(
            (hard, normal, easy)
        )
    assert set(got["domains"]) == {"chat", "math", "code", "safety"}
    assert got["score"] == pytest.approx(np.mean([v["score"] for v in got["domains"].values()]))
    assert got["hard"] == pytest.approx(np.mean([v["hard"] for v in got["domains"].values()]))


# ------------------------------------------------------------------ rrm-jax eval, end to end
class LeaningJudge:
    """Knows the right answer (its text starts with "right"), but picks the response shown first on a seeded
    share of samples: a position bias the summary must show."""

    def __init__(self, lean=0.3):
        self.lean, self.calls = lean, 0
        self.sampling = type("S", (), {"max_new_tokens": 64, "max_think_tokens": None})()

    def compare_many(self, pairs, *, votes=1, swap="random", seed=0, adaptive=False, progress=False):
        rng = np.random.default_rng(seed + self.calls)
        self.calls += 1
        out = []
        for _, a, _ in pairs:
            orders = ["ab"] * votes + (["ba"] * votes if swap == "both" else [])
            picks = [
                (0 if o == "ab" else 1) if rng.random() < self.lean else int(not a.startswith("right")) for o in orders
            ]
            va, vb = picks.count(0), picks.count(1)
            w = None if va == vb else int(vb > va)
            out.append(
                Verdict(winner=w, votes_a=va, votes_b=vb, invalid=0, soft=va / len(picks), reasonings=[""] * len(picks),
                        orders=orders, tokens=10 * len(picks), samples_drawn=len(picks), sample_verdicts=picks)
            )  # fmt: skip
        return out


def test_eval_scores_judgebench_and_writes_its_records_format(tmp_path, capsys):
    from rrm_jax.core.errors import ConfigError
    from rrm_jax.evaluation.cli import eval_main

    _judgebench_file(tmp_path / "jb.jsonl", n=40)
    out = tmp_path / "out"
    args = ["judgebench", f"data={tmp_path / 'jb.jsonl'}", f"out={out}", f"data_dir={tmp_path / 'tfds'}"]
    args += ["plots=false", "progress=false"]
    assert eval_main(args, judge_factory=lambda budget: LeaningJudge()) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())[0]
    exported = [json.loads(line) for line in (out / "judgebench-v1-tnone.jsonl").read_text().splitlines()]
    want = _official_judgebench(exported)  # JudgeBench's metric on the file it would have written
    assert summary["judgebench"]["overall"] == pytest.approx(want["overall"])
    assert summary["judgebench"]["groups"] == pytest.approx({g: want[g] for g in scoring.JUDGEBENCH_GROUPS})
    assert "JudgeBench" in printed and "livecodebench" in printed
    p = summary["position"]
    assert p["n_both"] == 40 and p["first_rate"] > 0.5 and p["consistency"] < 1  # the lean shows
    with pytest.raises(ConfigError, match="dataset=judgebench judges every pair in both orders"):
        eval_main(args + ["swap=random"], judge_factory=lambda budget: LeaningJudge())


def test_eval_scores_rmbench(tmp_path, capsys):
    from rrm_jax.evaluation.cli import eval_main

    _rmbench_file(tmp_path / "rm.json", n=8)
    out = tmp_path / "out"
    args = ["rmbench", f"data={tmp_path / 'rm.json'}", f"out={out}", f"data_dir={tmp_path / 'tfds'}"]
    assert eval_main(args + ["plots=false", "progress=false"], judge_factory=lambda budget: LeaningJudge(0.0)) == 0
    summary = json.loads((out / "summary.json").read_text())[0]
    rm = summary["rmbench"]  # a judge that always knows: every comparison won
    assert set(rm["domains"]) == {"chat", "math", "code", "safety"} and rm["score"] == 1.0
    assert "RM-Bench" in capsys.readouterr().out


def test_a_hub_dataset_id_reads_the_benchmark_from_the_cache(tmp_path, monkeypatch, capsys):
    """Issue 25.1: `data=org/name` for a benchmark reads its released files from the HF cache (offline here, as
    huggingface_hub lays a dataset snapshot out), for eval and for bon; an id not cached is one line."""
    import huggingface_hub.constants as hc

    from rrm_jax.core.errors import DataError as Missing
    from rrm_jax.evaluation.bon_cli import bon_main
    from rrm_jax.evaluation.cli import eval_main

    cache = tmp_path / "hub"
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def put(repo, files):
        root = cache / f"datasets--{repo.replace('/', '--')}"
        snap = root / "snapshots" / ("c" * 40)
        for name, text in files.items():
            (snap / name).parent.mkdir(parents=True, exist_ok=True)
            (snap / name).write_text(text)
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text("c" * 40)

    _judgebench_file(tmp_path / "a.jsonl", n=10)
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    put(
        "ScalerLab/JudgeBench",
        {"data/gpt.jsonl": "\n".join(lines[:6]) + "\n", "data/claude.jsonl": "\n".join(lines[6:]) + "\n"},
    )
    out = tmp_path / "jb"
    args = ["judgebench", "data=ScalerLab/JudgeBench", f"out={out}", f"data_dir={tmp_path / 'tfds'}", "plots=false"]
    assert eval_main(args + ["progress=false"], judge_factory=lambda budget: LeaningJudge(0.0)) == 0
    summary = json.loads((out / "summary.json").read_text())[0]
    assert summary["n"] == 10 and summary["judgebench"]["overall"] == 1.0  # both files, every pair right
    rows = [{"question_id": f"m{i}", "prompt": f"q{i}", "response_1": f"right {i}", "response_2": f"wrong {i}",
             "scores": [1, 0]} for i in range(4)]  # fmt: skip
    put("lmarena-ai/PPE-MATH-Best-of-K", {"data/test.jsonl": "".join(json.dumps(r) + "\n" for r in rows)})
    bon_args = ["lmarena-ai/PPE-MATH-Best-of-K", "--out", str(tmp_path / "bon"), "--n", "2", "--strategy", "oracle"]
    assert bon_main(bon_args + ["--progress", "false", "--plots", "false"]) == 0
    assert json.loads((tmp_path / "bon" / "summary.json").read_text())["accuracy"]["oracle"]["2"] == 1.0
    with pytest.raises(Missing, match="org/absent: not in the Hugging Face cache and the hub cannot be reached"):
        eval_main(["judgebench", "data=org/absent", f"out={tmp_path / 'x'}"], judge_factory=lambda b: LeaningJudge())


# ---------------------------------------------------------------------------------------------- RewardBench 2
def _rb2_by_definition(rows):
    """RewardBench 2's score re-derived from its written definition with plain loops (no code shared with the
    package): best-of-4 credit, the Ties formula, the unweighted mean of the subsets."""
    import math

    subsets, ties = {}, {"ref": {}, "tied": {}}
    for r in rows:
        s = r["scores"]
        if r["subset"] == "Ties":
            kind, k = r["id"].split(":")
            good, bad = s[: r["num_correct"]], s[r["num_correct"] :]
            ties[kind][int(k)] = (
                min(good) > max(bad),
                (max(good) - min(good)) if len(good) > 1 else None,
                min(good) - max(bad),
            )
        else:
            best = max(s)
            winners = [i for i, x in enumerate(s) if x == best]
            subsets.setdefault(r["subset"], []).append(1 / len(winners) if 0 in winners else 0.0)
    out = {k: sum(v) / len(v) for k, v in subsets.items()}
    if any(ties.values()):
        acc = {k: (sum(a for a, _, _ in v.values()) / len(v)) if v else 0.0 for k, v in ties.items()}
        shared = [k for k in ties["ref"] if k in ties["tied"]]
        pref = pref_hard = margin = 0.0
        for k in shared:
            spread, gap_t, gap_r = ties["tied"][k][1], ties["tied"][k][2], ties["ref"][k][2]
            hard = min(gap_r, gap_t)
            pref += (spread is not None and gap_t > spread) / len(shared)
            pref_hard += (spread is not None and hard > spread) / len(shared)
            if spread == 0:
                m = 0.0 if hard == 0 else math.tanh(math.copysign(math.inf, hard))
            else:
                m = math.tanh(hard / spread - 1)
            margin += m / len(shared)
        if not shared:
            pref = pref_hard = margin = float("nan")
        out["Ties"] = 0.3 * acc["tied"] + 0.3 * acc["ref"] + 0.2 * pref + 0.2 * pref_hard + 0.01 * margin
    return out, sum(out.values()) / len(out)


def _rb2_random_rows(rng, prompts=12):
    rows = []
    for sub in ("Factuality", "Precise IF", "Math", "Safety", "Focus"):
        for k in range(prompts):
            rows.append({"subset": sub, "id": str(k), "num_correct": 1, "scores": rng.integers(0, 4, 4).tolist()})
    for k in range(prompts):
        kinds = ("ref", "tied") if k % 4 else ("ref",)  # some prompts have no tied row (accuracy only)
        for kind in kinds:
            good = 1 if kind == "ref" else int(rng.integers(2, 5))
            n = good + int(rng.integers(1, 6))
            rows.append({"subset": "Ties", "id": f"{kind}:{k}", "num_correct": good,
                         "scores": rng.integers(0, 5, n).astype(float).tolist()})  # fmt: skip
    return rows


def test_rewardbench2_scores_equal_its_definition_on_random_scores():
    """Issue 25.1: RewardBench 2's official rules (allenai/reward-bench: reroll_and_score_dataset's tie-shared
    best-of-4 credit, process_single_model's Ties formula, the mean of six subsets) against a loop re-derivation,
    on integer scores that tie often (spreads of 0 reach the margin term's 0/0 and x/0)."""
    assert scoring.rewardbench2_credit([3, 3, 1, 0]) == 0.5
    assert scoring.rewardbench2_credit([2, 3, 1, 0]) == 0.0
    assert scoring.rewardbench2_credit([3, 1, 1, 0]) == 1.0
    # Ties by hand: prompt 0 ref gap 1, tied spread 1 gap 2 -> preferred, hard = min(1, 2) = 1 not > 1.
    hand = scoring.rewardbench2_ties([("ref:0", [3, 2], 1), ("tied:0", [5, 4, 2], 2)])
    assert hand["ref_accuracy"] == hand["tied_accuracy"] == 1.0
    assert (hand["correctness_preferred"], hand["correctness_preferred_hard"]) == (1.0, 0.0)
    assert hand["score"] == pytest.approx(0.8 + 0.01 * np.tanh(0.0))
    rng = np.random.default_rng(0)
    for trial in range(20):
        rows = _rb2_random_rows(rng, prompts=int(rng.integers(3, 12)))
        if trial % 5 == 4:  # a partial run: some subsets and Ties rows not scored yet
            rows = [{**r, "scores": None} if i % 3 == 0 else r for i, r in enumerate(rows)]
        got = scoring.rewardbench2_scores(rows)
        want, mean = _rb2_by_definition([r for r in rows if r["scores"] is not None])
        assert got["subsets"].keys() == want.keys()
        for k, v in want.items():
            assert got["subsets"][k] == pytest.approx(v, nan_ok=True), (trial, k)
        assert got["score"] == pytest.approx(mean, nan_ok=True)
        assert got["complete"] == (len(want) == 6)


def _rb2_file(path, prompts=6, seed=0):
    """RewardBench 2 rows in its released schema: 'right ...' texts are the correct ones (SimJudge reads them);
    ids repeat across subsets, as the real set's do."""
    rng = np.random.default_rng(seed)
    rows = []
    for sub in ("Factuality", "Precise IF", "Math", "Safety", "Focus"):
        for k in range(prompts):
            rows.append({"id": str(k), "prompt": f"{sub} question {k}", "chosen": [f"right {sub}{k}"],
                         "rejected": [f"wrong {sub}{k}-{j}" for j in range(3)], "num_correct": 1,
                         "num_rejected": 3, "total_completions": 4, "models": [], "subset": sub})  # fmt: skip
    for k in range(prompts):
        for kind, good in (("ref", 1), ("tied", int(rng.integers(2, 4)))):
            rows.append({"id": f"{kind}:{k}", "prompt": f"ties question {k}",
                         "chosen": [f"right t{k}-{j}" for j in range(good)],
                         "rejected": [f"wrong t{k}-{j}" for j in range(3)], "num_correct": good, "subset": "Ties"})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_rewardbench2_rows_run_through_bon_and_print_its_official_scores(tmp_path, capsys):
    """Issue 25.1: `rrm-jax bon` reads RewardBench 2's rows, ranks all of each row's candidates with the judge's
    tournaments, stores each candidate's tournament score, and its summary is the official score of those
    scores (re-derived here); a judge that always prefers the right answer scores 100 on the best-of-4 subsets
    and on Ties' reference accuracy; bad rows name their field."""
    from rrm_jax.evaluation.bon import read_bon
    from rrm_jax.evaluation.bon_cli import bon_main
    from test_bon import SimJudge

    data = tmp_path / "rb2.jsonl"
    rows = _rb2_file(data)
    items = read_bon(data)
    assert len(items) == len(rows) and len({it.id for it in items}) == len(rows)  # the subset qualifies the id
    tied = next(it for it in items if it.rb2 == ("Ties", "tied:0"))
    assert tied.correct == tuple(i < len(tied.candidates) - 3 for i in range(len(tied.candidates)))
    args = ["--model", "tiny", "--progress", "false", "--strategy", "knockout,elo,random,oracle"]
    for name, p in (("sim", 0.8), ("perfect", 1.0)):
        out = tmp_path / name
        assert bon_main([str(data), "--out", str(out), *args], judge=SimJudge(p=p)) == 0
        summary = json.loads((out / "summary.json").read_text())
        recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
        assert len(recs) == len(rows)
        assert summary["n"] == [0] and summary["accuracy"]["oracle"]["all"] == 1.0
        for s in ("knockout", "elo", "random"):
            mine = []
            for r in recs:
                x = r["results"][s]["all"]
                scores = [float(i == x["pick"]) for i in range(r["n_candidates"])] if s == "random" else x["scores"]
                mine.append({**r["rb2"], "scores": scores, "num_correct": sum(r["correct"])})
            want, mean = _rb2_by_definition(mine)
            got = summary["rewardbench2"][s]
            assert got["subsets"] == pytest.approx(want) and got["score"] == pytest.approx(mean)
            assert got["complete"]
        if name == "perfect":
            for s in ("knockout", "elo"):
                got = summary["rewardbench2"][s]
                assert all(v == 1.0 for k, v in got["subsets"].items() if k != "Ties"), got
                assert got["ties"]["ref_accuracy"] == 1.0
            # a round robin orders every right answer above every wrong one; a knockout's rounds reached cannot
            # (a right answer beaten by another right one in round 1 ties with the wrong ones beaten there)
            assert summary["rewardbench2"]["elo"]["ties"]["tied_accuracy"] == 1.0
        assert (out / "rewardbench2.png").exists()
    printed = capsys.readouterr().out
    assert "| strategy | Factuality | Precise IF | Math | Safety | Focus | Ties | score |" in printed
    bad = tmp_path / "bad.jsonl"
    for row, field in (({**rows[0], "num_correct": 2}, "num_correct"), ({**rows[-1], "id": "x:1"}, "id"),
                       ({**rows[0], "rejected": []}, "rejected")):  # fmt: skip
        bad.write_text(json.dumps(row) + "\n")
        with pytest.raises(DataError, match=rf"bad.jsonl:1:{field}: "):
            read_bon(bad)
