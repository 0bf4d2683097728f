"""`rrm-jax bon`: strategies against closed forms under a simulated judge of known accuracy, majority and answer
extraction on hand-made cases, input errors, resume after a kill, and a policy + judge run on tiny random models."""

import json
import zlib

import numpy as np
import pytest

from rrm_jax.data import DataError
from rrm_jax.data.answers import math_answer
from rrm_jax.evaluation import bon
from rrm_jax.evaluation.bon import BonItem, pick_majority, read_bon, run_bon
from rrm_jax.evaluation.bon_cli import bon_main
from rrm_jax.evaluation.bon_report import summarize_bon
from rrm_jax.evaluation.records import RecordsFile
from rrm_jax.judge.tournament import knockout_win_probability
from rrm_jax.judge.verdict import Verdict

P = 0.8


class SimJudge:
    """Prefers the correct candidate ("right ...") over a wrong one with probability p, else a fair coin; its draw
    is keyed on the comparison's item id alone, so it does not depend on what else shares a batch."""

    def __init__(self, p=P, fail_after=None):
        self.p, self.fail_after = p, fail_after
        self.calls, self.pairs = 0, []

    def compare_many(self, pairs, *, votes=1, swap="random", seed=0, item_ids=None, **kw):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated kill")
        self.calls += 1
        out = []
        for (q, a, b), key in zip(pairs, item_ids):
            self.pairs.append((q, a, b))
            ra, rb = a.startswith("right"), b.startswith("right")
            u = np.random.default_rng([key & 0xFFFFFFFF, 7]).random()
            if ra != rb:
                first = (u < self.p) == ra
            else:
                first = u < 0.5
            out.append(
                Verdict(
                    winner=0 if first else 1,
                    votes_a=int(first),
                    votes_b=int(not first),
                    invalid=0,
                    soft=0.5,
                    tokens=10,
                    samples_drawn=1,
                )
            )
        return out


def one_right_items(count, k=8, seed=0, within=None):
    """Queries with k candidates of which exactly one (at a random place among the first `within`) is correct."""
    rng = np.random.default_rng(seed)
    items = []
    for q in range(count):
        good = int(rng.integers(within or k))
        cands = [f"{'right' if i == good else 'wrong'} {q}-{i}" for i in range(k)]
        items.append(BonItem(f"q{seed}-{q}", f"question {q}", tuple(cands), tuple(i == good for i in range(k))))
    return items


def write_jsonl(path, items):
    path.write_text(
        "".join(
            json.dumps({"id": it.id, "query": it.query, "candidates": list(it.candidates), "correct": list(it.correct)})
            + "\n"
            for it in items
        )
    )
    return path


def test_judge_strategies_beat_random_and_match_closed_forms(tmp_path):
    items = one_right_items(300) + one_right_items(300, within=2, seed=1)
    ns = (2, 4, 8)
    recs = run_bon(
        SimJudge(),
        items,
        tmp_path,
        meta={},
        ns=ns,
        strategies=("knockout", "elo", "random", "oracle"),
        batch_size=50,
        progress=False,
    )
    s = summarize_bon(recs, strategies=("knockout", "elo", "random", "oracle"), ns=ns)
    acc = s["accuracy"]
    for n in ns:
        inside = np.array([any(it.correct[:n]) for it in items])
        # closed forms: random = mean share of correct among the n; oracle = share with any correct;
        # knockout = P(in the first n) x P(the one correct candidate wins a random bracket at p per match)
        assert acc["oracle"][str(n)] == pytest.approx(inside.mean())
        assert acc["random"][str(n)] == pytest.approx(np.mean(inside / n), abs=0.07)
        ko = inside.mean() * knockout_win_probability(n, P)
        assert acc["knockout"][str(n)] == pytest.approx(ko, abs=0.07)
        gap = ko - np.mean(inside / n)  # >= 0.075 (n=2) here
        assert acc["knockout"][str(n)] > acc["random"][str(n)] + gap / 2
        assert acc["elo"][str(n)] > acc["random"][str(n)] + gap / 2
        assert acc["elo"][str(n)] <= acc["oracle"][str(n)]
        # knockout plays n - 1 matches, the round robin n(n - 1)/2
        assert s["comparisons_per_query"]["knockout"][str(n)] == n - 1
        assert s["comparisons_per_query"]["elo"][str(n)] == n * (n - 1) / 2
        assert s["tokens_per_query"]["elo"][str(n)] == 10 * n * (n - 1) / 2
    # with every pair judged, elo is not worse than a single-elimination bracket at n = 8
    assert acc["elo"]["8"] >= acc["knockout"]["8"] - 0.03


def test_a_real_judge_batches_every_tournament_of_a_chunk_into_one_generate_per_round(tmp_path):
    from fakes import FakeGenerate, FakeModel
    from rrm_jax.judge.judge import Judge
    from rrm_jax.sampler import SamplingConfig

    # a perfect judge: the sampler's scripted verdict names whichever shown response is the right one
    gen = FakeGenerate(
        FakeModel.tokenizer,
        lambda first, second, k: (
            "1" if first.startswith("right") else "2",
            False,
            0.9 if first.startswith("right") else 0.1,
        ),
    )
    judge = Judge(FakeModel(), sampling=SamplingConfig(max_new_tokens=64), generate=gen)
    items = one_right_items(6, k=4, seed=5)
    recs = run_bon(
        judge,
        items,
        tmp_path,
        meta={},
        ns=(2, 4),
        strategies=("knockout", "elo", "oracle"),
        batch_size=6,
        votes=3,
        progress=False,
    )
    s = summarize_bon(recs, strategies=("knockout", "elo", "oracle"), ns=(2, 4))
    assert s["accuracy"]["knockout"] == s["accuracy"]["elo"] == s["accuracy"]["oracle"]
    # 6 queries x (knockout n=2: 1 + n=4: 2 + elo n=2: 1 + n=4: 6) = 60 matches in round 1, 6 finals in round 2;
    # each match's 3 votes are the sampler's n=3 on one prompt
    assert [(len(p), c.n) for p, c in gen.calls] == [(60, 3), (6, 3)]
    for r in recs:
        for v in [*r["results"]["knockout"].values(), *r["results"]["elo"].values()]:
            assert v["samples"] == 3 * v["comparisons"] and v["tokens"] > 0


def test_majority_on_hand_made_cases():
    a = ["A", "B", "B", "A", "C"]
    assert pick_majority(a, 5) == 0  # A and B tie with 2 each: A came first
    assert pick_majority(a, 3) == 1  # B, 2 of 3
    assert pick_majority(["C", "A", "B", "B"], 4) == 2
    assert pick_majority([None, "x", None, "y", "y"], 5) == 3  # candidates without an answer do not vote
    assert pick_majority([None, None], 2) == 0


def test_extract_path_and_majority_through_the_cli(tmp_path, capsys):
    lines = [
        {
            "query": "q1",
            "answer": "B",
            "candidates": ["The answer is (B)", "The answer is (C)", "(C) I think", "the answer is C"],
        },
        {
            "query": "q2",
            "answer": "\\boxed{A}",
            "candidates": ["\\boxed{A}", "The answer is (D)", "no idea", "Answer: A"],
        },
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    items = read_bon(data, extract="choice")
    assert items[0].correct == (True, False, False, False) and items[0].answers == ("B", "C", "C", "C")
    assert items[1].correct == (True, False, False, True) and items[1].answers == ("A", "D", None, "A")
    out = tmp_path / "out"
    assert (
        bon_main(
            [
                str(data),
                "--extract",
                "choice",
                "--strategy",
                "random,majority,oracle",
                "--n",
                "2,4,8",
                "--out",
                str(out),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    # majority at n=4: q1 picks a "C" (wrong), q2 picks "A" (right); at n=2 q1 ties B/C -> B, q2 ties A/D -> A
    assert s["accuracy"]["majority"] == {"2": 1.0, "4": 0.5}
    assert s["accuracy"]["oracle"] == {"2": 1.0, "4": 1.0}
    assert "8" not in s["accuracy"]["random"] and any("n=8 skipped" in n for n in s["notes"])
    md = (out / "summary.md").read_text()
    assert "| majority | 100.0 | 50.0 |" in md
    assert (out / "bon.png").stat().st_size > 0
    # no extractor: majority is skipped and says so; the data carry `correct`
    data2 = write_jsonl(tmp_path / "c.jsonl", one_right_items(3, k=2))
    assert (
        bon_main(
            [
                str(data2),
                "--strategy",
                "majority,oracle",
                "--n",
                "2",
                "--out",
                str(tmp_path / "o2"),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    s2 = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert "majority" not in s2["accuracy"] and any("majority skipped" in n for n in s2["notes"])


@pytest.mark.parametrize(
    "line, field",
    [
        ({"candidates": ["a"], "correct": [True]}, "query"),
        ({"query": "q", "candidates": "a", "correct": [True]}, "candidates"),
        ({"query": "q", "candidates": ["a", 3], "correct": [True, False]}, "candidates"),
        ({"query": "q", "candidates": ["a", "b"], "correct": [True]}, "correct"),
        ({"query": "q", "candidates": ["a", "b"], "correct": [1, 0]}, "correct"),
        ({"query": "q", "candidates": ["a", "b"]}, "correct"),
        ({"query": "q", "candidates": ["a"], "answer": ["x"]}, "answer"),
    ],
)
def test_bad_input_names_file_line_field(tmp_path, line, field):
    data = tmp_path / "bad.jsonl"
    good = {"query": "ok", "candidates": ["x", "y"], "correct": [True, False]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError, match=f"bad.jsonl:2:{field}: "):
        read_bon(data, extract="choice")


def test_bad_input_through_the_cli_is_one_line(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"query": "q", "candidates": ["a"], "answer": "B"}) + "\n")
    assert bon_main([str(data), "--strategy", "oracle", "--out", str(tmp_path / "o"), "--progress", "false"]) == 2
    assert "bad.jsonl:1:answer: an answer needs an extractor" in capsys.readouterr().err
    policy_data = tmp_path / "p.jsonl"
    policy_data.write_text(json.dumps({"query": "q"}) + "\n")
    with pytest.raises(DataError, match="p.jsonl:1:answer: missing"):
        read_bon(policy_data, extract="math", policy=True)


def test_resume_after_a_kill_finishes_only_the_rest(tmp_path, capsys):
    items = one_right_items(12, k=4, seed=3)
    data = write_jsonl(tmp_path / "d.jsonl", items)
    args = [
        "--n",
        "2,4",
        "--strategy",
        "knockout,elo,random,oracle",
        "--batch-size",
        "4",
        "--progress",
        "false",
        "--model",
        "tiny",
    ]  # the judge is injected; --model only names it in the records
    full = tmp_path / "full"
    assert bon_main([str(data), "--out", str(full), *args], judge=SimJudge()) == 0
    killed = tmp_path / "killed"
    # 4 queries a chunk, each chunk of (knockout at n=4) takes 2 rounds: dies in the second chunk
    with pytest.raises(RuntimeError, match="simulated kill"):
        bon_main([str(data), "--out", str(killed), *args], judge=SimJudge(fail_after=3))
    assert [r["id"] for r in RecordsFile(killed / "records.jsonl").load()] == [it.id for it in items[:4]]
    again = SimJudge()
    assert bon_main([str(data), "--out", str(killed), *args], judge=again) == 0
    assert {q for q, _, _ in again.pairs} == {it.query for it in items[4:]}  # finished queries are not redone
    assert json.loads((killed / "summary.json").read_text()) == json.loads((full / "summary.json").read_text())
    assert [r["results"] for r in RecordsFile(killed / "records.jsonl").load()] == [
        r["results"] for r in RecordsFile(full / "records.jsonl").load()
    ]
    # other settings or other data in the same --out are refused
    capsys.readouterr()
    assert bon_main([str(data), "--out", str(killed), *args, "--n", "2"], judge=SimJudge()) == 2
    assert "other settings" in capsys.readouterr().err
    data.write_text(data.read_text().replace("question 0", "question zero"))
    assert bon_main([str(data), "--out", str(killed), *args], judge=SimJudge()) == 2
    assert "other data" in capsys.readouterr().err


def test_policy_candidates_then_direct_judge_on_tiny_models(tmp_path, capsys):
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"query": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in (1, 2)))
    out = tmp_path / "out"
    argv = [
        str(data),
        "--policy",
        "tiny",
        "--model",
        "tiny",
        "--tokenizer",
        "chars",
        "--mesh",
        "1,1,1",
        "--dtype",
        "float32",
        "--n",
        "3",
        "--extract",
        "math",
        "--policy-max-new-tokens",
        "6",
        "--direct",
        "--strategy",
        "knockout,random,majority,oracle",
        "--out",
        str(out),
        "--progress",
        "false",
    ]
    # (n = 3 and knockout alone: both bracket rounds send one match per query, so the judge compiles once)
    assert bon_main(argv) == 0
    cands = RecordsFile(out / "candidates.jsonl").load()
    assert [len(c["candidates"]) for c in cands] == [3, 3]
    recs = RecordsFile(out / "records.jsonl").load()
    assert len(recs) == 2
    for r, c in zip(recs, cands):
        ko = r["results"]["knockout"]["3"]
        assert ko["comparisons"] == 2 and 0 < ko["tokens"] <= 2 * (len("\n</think>\n\n\\boxed{Assistant ") + 8)
        assert r["correct"] == [math_answer(t) == math_answer(f"\\boxed{{{c['answer']}}}") for t in c["candidates"]]
    s = json.loads((out / "summary.json").read_text())
    assert s["direct"] is True and s["max_think_tokens"] == 0 and s["policy"] == {"path": "tiny"}
    assert set(s["accuracy"]) == {"knockout", "random", "majority", "oracle"}
    # a rerun resumes: the candidates are reused, nothing is generated or judged again
    before = (out / "candidates.jsonl").read_bytes(), (out / "records.jsonl").read_bytes()
    assert bon_main(argv) == 0
    assert ((out / "candidates.jsonl").read_bytes(), (out / "records.jsonl").read_bytes()) == before


def test_random_pick_is_seeded_per_query_and_n():
    it = one_right_items(1, k=8)[0]
    picks = {bon.pick_random(it, 8, s) for s in range(40)}
    assert len(picks) > 4 and bon.pick_random(it, 8, 5) == bon.pick_random(it, 8, 5)
    assert zlib.crc32(b"q0") == bon._key("q0")
    with pytest.raises(DataError, match="duplicate ids"):
        run_bon(None, [it, it], "unused", meta={}, strategies=("random",))


def test_ppe_best_of_k_rows_run_through_bon_as_their_own_files(tmp_path, capsys):
    """Issue 25.1: PPE's best-of-K rows {question_id, prompt, response_1..K, scores} (as .jsonl and as its .parquet)
    read as the same queries, and `rrm-jax bon` runs them: the same summary from either file."""
    items = one_right_items(16, k=4, seed=5)
    rows = [
        {"question_id": it.id, "prompt": it.query, **{f"response_{i + 1}": c for i, c in enumerate(it.candidates)},
         "scores": [int(ok) for ok in it.correct], "model_name": "m"}
        for it in items
    ]  # fmt: skip
    jsonl = tmp_path / "ppe.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_bon(jsonl) == items
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    parquet = tmp_path / "ppe.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    assert read_bon(parquet) == items
    args = [
        "--n",
        "2,4",
        "--strategy",
        "knockout,elo,oracle",
        "--progress",
        "false",
        "--model",
        "tiny",
        "--plots",
        "false",
    ]
    summaries = []
    for name, data in (("a", jsonl), ("b", parquet)):
        assert bon_main([str(data), "--out", str(tmp_path / name), *args], judge=SimJudge()) == 0
        summaries.append(json.loads((tmp_path / name / "summary.json").read_text()))
    assert summaries[0]["accuracy"] == summaries[1]["accuracy"]
    assert summaries[0]["accuracy"]["oracle"]["4"] == 1.0  # each query holds its one right answer among 4
    assert summaries[0]["accuracy"]["knockout"]["4"] > 0.25  # the judge beats a random pick of 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "scores": [1]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1:correct: 1 entries for 4 candidates"):
        read_bon(bad)


def test_the_rrm_conflict_pair_protocol_scores_each_run_and_the_vote_across_runs(tmp_path, capsys):
    """Issue 25.1: --protocol rrm-conflict-pairs: per question with a conflict, `rounds` seeded correct-vs-incorrect
    pairs; one verdict per run and seed, shown in a seeded order; accuracy per run (no verdict 0.5) and of the
    majority across runs, recomputed here from the records; questions without a conflict are counted out."""
    from rrm_jax.evaluation.conflict import conflict_pairs

    class RunJudge:  # right with probability 0.7, a fresh draw per run (seed) and pair; says nothing on 1 in 10
        calls = 0

        def compare_many(self, pairs, *, votes=1, swap="none", seed=0, **kw):
            self.calls += 1
            out = []
            for q, a, b in pairs:
                u = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32((q + a + b).encode())]).random(2)
                w = None if u[1] < 0.1 else int((u[0] < 0.7) != a.startswith("right"))
                out.append(Verdict(winner=w, votes_a=int(w == 0), votes_b=int(w == 1), invalid=int(w is None),
                                   soft=0.5, orders=["ab"], sample_verdicts=[w], tokens=5, samples_drawn=1))  # fmt: skip
            return out

    items = one_right_items(10, k=4, seed=7) + [BonItem("all-wrong", "q", ("wrong a", "wrong b"), (False, False))]
    data = write_jsonl(tmp_path / "d.jsonl", items)
    out = tmp_path / "out"
    args = [str(data), "--out", str(out), "--protocol", "rrm-conflict-pairs", "--rounds", "3", "--runs", "3"]
    args += ["--progress", "false", "--model", "tiny", "--seed", "4"]
    assert bon_main(args, judge=RunJudge()) == 0
    scores = json.loads((out / "summary.json").read_text())["conflict"]
    runs = [RecordsFile(out / f"conflict-seed{s}.jsonl").load() for s in (4, 5, 6)]
    credit = lambda w: 0.5 if w is None else float(w == 0)  # noqa: E731
    assert scores["runs"] == pytest.approx([np.mean([credit(r["winner"]) for r in recs]) for recs in runs])
    votes = np.array([[r["winner"] for r in recs] for recs in runs], dtype=object).T
    voted = [0.5 if list(v).count(0) == list(v).count(1) else float(list(v).count(0) > list(v).count(1)) for v in votes]
    assert scores["voted"] == pytest.approx(np.mean(voted))
    assert (scores["pairs"], scores["no_conflict"]) == (30, 1)
    pairs, _ = conflict_pairs(items, 3, 4)
    assert all(p.response_a.startswith("right") and p.response_b.startswith("wrong") for p in pairs)
    assert [r["id"] for r in runs[0]] == [p.id for p in pairs] == [r["id"] for r in runs[2]]
    flips = [r["orders"][0] == "ba" for r in runs[0]]
    assert 0 < sum(flips) < len(flips)  # a seeded order per pair
    assert "voted across 3 runs" in capsys.readouterr().out
    again = RunJudge()
    assert bon_main(args, judge=again) == 0 and again.calls == 0  # a finished run resumes with nothing to judge
