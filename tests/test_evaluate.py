"""Evaluation runs end to end with scripted fake judges: records, 0.5 for missing verdicts, position swaps,
resume after an exception / a killed process, summaries, plots and the CLIs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rrm_jax.core.configs import load
from rrm_jax.core.errors import ConfigError
from rrm_jax.data import KINDS, DataError, PairRecord
from rrm_jax.evaluation import scoring
from rrm_jax.evaluation.records import EvalError, RecordsFile
from rrm_jax.evaluation.report import summarize
from rrm_jax.evaluation.run import evaluate
from rrm_jax.judge.judge import show_first_b

ROOT = Path(__file__).resolve().parents[1]

FAKE_JUDGE_SRC = '''
import hashlib, time, types
from rrm_jax.judge.verdict import Verdict


def _h(text):
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


class OracleJudge:
    """Knows the gold text of every pair (keyed by query + the set of responses); says nothing on queries
    whose hash is divisible by `mute_every`; with `first=True` always prefers the first response shown."""

    def __init__(self, records, *, mute_every=0, first=False, fail_after=None, sleep=0.0, budget=None):
        self.gold = {}
        for r in records:
            key = (r.query, frozenset((r.response_a, r.response_b)))
            self.gold[key] = None if r.label is None else (r.response_a, r.response_b)[r.label]
        self.mute_every, self.first, self.fail_after, self.sleep = mute_every, first, fail_after, sleep
        self.budget = budget
        self.sampling = types.SimpleNamespace(max_new_tokens=256, max_think_tokens=budget)
        self.calls, self.seen = [], []

    def muted(self, q):
        return self.mute_every > 0 and _h(q) % self.mute_every == 0

    def compare_many(self, pairs, *, votes=1, swap="random", seed=0, adaptive=False, progress=False):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        time.sleep(self.sleep)
        self.calls.append(dict(n=len(pairs), votes=votes, swap=swap, seed=seed))
        out = []
        for q, a, b in pairs:
            self.seen.append((q, a, b))
            if self.muted(q):
                w = None
            elif self.first:
                w = 0
            else:
                g = self.gold[(q, frozenset((a, b)))]
                w = 0 if g is None or g == a else 1
            n = votes
            tokens = n * (10 + _h(a + b) % 50 + (self.budget or 0) // 4)
            out.append(Verdict(winner=w, votes_a=n if w == 0 else 0, votes_b=n if w == 1 else 0,
                               invalid=n if w is None else 0, soft=0.5 if w is None else 0.9 - 0.8 * w,
                               reasonings=["<think>"] * n, orders=["ab"] * n, tokens=tokens, samples_drawn=n,
                               forced=0, truncated=False, sample_verdicts=[w] * n))
        return out
'''
_ns: dict = {}
exec(compile(FAKE_JUDGE_SRC, "fake_judge", "exec"), _ns)
OracleJudge = _ns["OracleJudge"]


def synthetic(n: int, ties: int = 0) -> list[PairRecord]:
    return [
        PairRecord(
            f"s{i}",
            f"question {i}",
            f"good answer {i}",
            f"bad answer {i}" if i % 2 else f"meh {i}",
            None if i < ties else i % 2,
            "even" if i % 2 == 0 else "odd",
            "jsonl",
        )
        for i in range(n)
    ]


def _strip(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


# ------------------------------------------------------------------ records and scoring
def test_pandalm_slice_records_and_scores(shared_dir, tmp_path):
    from rrm_jax.data import load_pairs

    pairs = load_pairs(
        "pandalm", shared_dir / "data" / "pandalm" / "testset-v1.json", data_dir=tmp_path / "tfds", split="test[:150]"
    )
    judge = OracleJudge(list(pairs), mute_every=7)
    s = evaluate(judge, pairs, tmp_path / "out", votes=3, seed=11, batch_size=32, progress=False)
    recs = RecordsFile(tmp_path / "out" / "records-v3-tnone.jsonl").load()
    assert [r["id"] for r in recs] == [r.id for r in pairs]
    assert [c["n"] for c in judge.calls] == [32, 32, 32, 32, 22]  # chunked compare_many
    assert all(c["swap"] == "none" and c["votes"] == 3 for c in judge.calls)  # the harness owns the coin
    expected_winners, credits = [], []
    for row, (r, rec) in enumerate(zip(pairs, recs)):
        muted = judge.muted(r.query)
        flipped = show_first_b(11, row)
        assert rec["orders"] == ["ba" if flipped else "ab"] * 3
        assert rec["label"] == r.label and rec["subset"] == r.subset
        # a tie gold: the oracle picks the first response shown
        want = None if muted else ((1 if flipped else 0) if r.label is None else r.label)
        assert rec["winner"] == want
        if want is not None:
            assert rec["votes_a" if want == 0 else "votes_b"] == 3 and rec["sample_verdicts"] == [want] * 3
        expected_winners.append(want)
        credits.append(None if r.label is None else (0.5 if muted else 1.0))
        assert rec["credit"] == credits[-1]
    assert 0 < sum(r["winner"] is None for r in recs) < len(recs)
    assert any(r.label is None for r in pairs)
    scored = [c for c in credits if c is not None]
    assert s["accuracy"] == pytest.approx(sum(scored) / len(scored))
    assert s["no_verdict"] == sum(w is None for w in expected_winners)
    assert s["pandalm"] == scoring.pandalm_metrics([r.label for r in pairs], expected_winners)
    assert s["tokens_per_comparison"] == pytest.approx(sum(r["tokens"] for r in recs) / len(recs))


def test_position_bias_follows_the_seeded_coin(shared_dir, tmp_path):
    from rrm_jax.data import load_pairs

    pairs = load_pairs("llmbar", shared_dir / "data" / "llmbar" / "Natural.json", data_dir=tmp_path / "tfds")
    s = evaluate(OracleJudge(list(pairs), first=True), pairs, tmp_path / "o", seed=3, batch_size=40, progress=False)
    # always "first shown": right exactly when the gold side was shown first
    want = [float(r.label == (1 if show_first_b(3, i) else 0)) for i, r in enumerate(pairs)]
    assert s["accuracy"] == pytest.approx(sum(want) / len(want))
    assert s["llmbar"]["subsets"] == {"Natural": pytest.approx(sum(want) / len(want))}
    flips = sum(show_first_b(3, i) for i in range(len(pairs)))
    assert 30 < flips < 70


def test_rewardbench_schema_end_to_end(tmp_path):
    from rrm_jax.data import load_pairs

    subsets = ["alpacaeval-easy"] * 6 + ["mt-bench-med"] * 4 + ["hep-go"] * 5 + ["math-prm"] * 3
    rows = [
        {
            "prompt": f"p{i}",
            "chosen": f"right {i}",
            "rejected": f"wrong {i}",
            "subset": s,
            "id": 100 + i,
            "chosen_model": "x",
            "rejected_model": "y",
        }
        for i, s in enumerate(subsets)
    ]
    src = tmp_path / "filtered.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs("rewardbench", src, data_dir=tmp_path / "tfds")
    judge = OracleJudge(list(pairs), mute_every=3)
    s = evaluate(judge, pairs, tmp_path / "out", batch_size=7, progress=False)
    acc = {}
    for sub in set(subsets):
        cr = [0.5 if judge.muted(f"p{i}") else 1.0 for i, x in enumerate(subsets) if x == sub]
        acc[sub] = sum(cr) / len(cr)
    assert {k: v["accuracy"] for k, v in s["subsets"].items()} == pytest.approx(acc)
    want = scoring.rewardbench_scores(acc)
    assert s["rewardbench"]["sections"] == pytest.approx(want["sections"])
    assert set(want["sections"]) == {"Chat", "Reasoning"} and not s["rewardbench"]["complete"]


def test_swap_modes_pass_through(tmp_path):
    data = synthetic(6)
    for swap in ("none", "both"):
        j = OracleJudge(data)
        evaluate(j, data, tmp_path / swap, swap=swap, progress=False)
        assert [c["swap"] for c in j.calls] == [swap]
    with pytest.raises(ValueError, match="swap must be one of"):
        evaluate(OracleJudge(data), data, tmp_path / "x", swap="sometimes", progress=False)


# ------------------------------------------------------------------ resume
def test_resume_after_crash_no_duplicates_no_losses(tmp_path):
    data = synthetic(23, ties=2)
    crashing = OracleJudge(data, mute_every=5, fail_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(crashing, data, tmp_path / "run", batch_size=5, seed=1, progress=False)
    path = tmp_path / "run" / "records-v1-tnone.jsonl"
    assert [r["id"] for r in RecordsFile(path).load()] == [f"s{i}" for i in range(10)]
    resumed = OracleJudge(data, mute_every=5)
    s = evaluate(resumed, data, tmp_path / "run", batch_size=5, seed=1, progress=False)
    assert sorted(q for q, _, _ in resumed.seen) == sorted(f"question {i}" for i in range(10, 23))
    full = OracleJudge(data, mute_every=5)
    s_full = evaluate(full, data, tmp_path / "full", batch_size=5, seed=1, progress=False)
    assert _strip(RecordsFile(path).load()) == _strip(RecordsFile(tmp_path / "full" / path.name).load())
    assert {k: v for k, v in s.items() if "second" not in k and "_per_s" not in k} == {
        k: v for k, v in s_full.items() if "second" not in k and "_per_s" not in k
    }
    # a finished run resumes to a no-op
    again = OracleJudge(data)
    evaluate(again, data, tmp_path / "run", batch_size=5, seed=1, progress=False)
    assert again.calls == []


def test_torn_line_repaired_and_corruption_reported(tmp_path):
    data = synthetic(8)
    with pytest.raises(RuntimeError):
        evaluate(OracleJudge(data, fail_after=1), data, tmp_path, batch_size=3, progress=False)
    path = tmp_path / "records-v1-tnone.jsonl"
    with open(path, "a") as f:
        f.write('{"id": "s3", "row": 3, "winn')  # killed mid-write
    j = OracleJudge(data)
    evaluate(j, data, tmp_path, batch_size=3, progress=False)
    recs = RecordsFile(path).load()
    assert [r["id"] for r in recs] == [f"s{i}" for i in range(8)] and len(j.seen) == 5
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"records-v1-tnone\.jsonl:3: corrupt record"):
        RecordsFile(path).load()
    path.write_text("\n".join(lines[:2] + [lines[1]]) + "\n")
    with pytest.raises(DataError, match="duplicate record for id 's1'"):
        RecordsFile(path).load()


def test_resume_with_other_settings_is_refused(tmp_path):
    data = synthetic(4)
    evaluate(OracleJudge(data), data, tmp_path, seed=0, progress=False)
    with pytest.raises(EvalError, match="seed: 0 there vs 1 now"):
        evaluate(OracleJudge(data), data, tmp_path, seed=1, progress=False)
    with pytest.raises(EvalError, match="swap"):
        evaluate(OracleJudge(data), data, tmp_path, swap="both", progress=False)


KILL_SCRIPT = (
    FAKE_JUDGE_SRC
    + """
import sys
from rrm_jax.data import read_pairs_jsonl
from rrm_jax.evaluation.cli import eval_main

data = read_pairs_jsonl(sys.argv[1]).records
sys.exit(eval_main(sys.argv[2:], judge_factory=lambda budget: OracleJudge(data, mute_every=4, sleep=0.15)))
"""
)


def test_killed_process_resumes(tmp_path):
    from rrm_jax.evaluation.cli import eval_main

    data = synthetic(40, ties=3)
    src = tmp_path / "pairs.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "id": r.id,
                    "query": r.query,
                    "response_a": r.response_a,
                    "response_b": r.response_b,
                    "label": r.label,
                    "subset": r.subset,
                }
            )
            + "\n"
            for r in data
        )
    )
    script = tmp_path / "run_eval.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "out"
    args = [
        "--dataset",
        "jsonl",
        "--data",
        str(src),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--progress",
        "false",
        "--data-dir",
        str(tmp_path / "tfds"),
        "--plots",
        "false",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(src), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    path = out / "records-v1-tnone.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = RecordsFile(path).load(repair=False)
    assert 6 <= len(before) < 40
    judge = OracleJudge(data, mute_every=4)
    assert eval_main(args, judge_factory=lambda budget: judge) == 0
    recs = RecordsFile(path).load()
    assert [r["id"] for r in recs] == [r.id for r in data]
    assert len(judge.seen) == 40 - len(before)
    assert _strip(recs[: len(before)]) == _strip(before)
    summary = json.loads((out / "summary.json").read_text())[0]
    muted = [judge.muted(r.query) for r in data[3:]]
    assert summary["accuracy"] == pytest.approx(sum(0.5 if m else 1.0 for m in muted) / len(muted))


# ------------------------------------------------------------------ CLIs, recipes, summaries, plots
def test_eval_cli_settings_grid_summary_and_plots(tmp_path):
    from rrm_jax.evaluation.cli import EvalConfig, eval_main

    data = synthetic(12)
    src = tmp_path / "p.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {"id": r.id, "query": r.query, "response_a": r.response_a, "response_b": r.response_b, "label": r.label}
            )
            + "\n"
            for r in data
        )
        + '{"query": "q", "response_a": "", "response_b": "b", "label": 0}\n'
    )
    out = tmp_path / "out"
    assert (
        eval_main(
            ["--dataset", "jsonl", "--data", str(src), "--out", str(out), "--data-dir", str(tmp_path / "tfds")],
            judge_factory=lambda b: OracleJudge(data),
        )
        == 2
    )  # on_bad=raise
    budgets = []
    rc = eval_main(
        [
            "--dataset",
            "jsonl",
            "--data",
            str(src),
            "--out",
            str(out),
            "--votes",
            "1,3",
            "--max-think-tokens",
            "none,64",
            "--progress",
            "false",
            "--data-dir",
            str(tmp_path / "tfds"),
            "max_items=10",
            "on_bad=skip",
        ],
        judge_factory=lambda b: budgets.append(b) or OracleJudge(data, mute_every=3, budget=b),
    )
    assert rc == 0 and budgets == [None, 64]
    tags = ["v1-tnone", "v3-tnone", "v1-t64", "v3-t64"]
    assert sorted(p.name for p in out.glob("records-*.jsonl")) == sorted(f"records-{t}.jsonl" for t in tags)
    summaries = json.loads((out / "summary.json").read_text())
    assert [s["setting"] for s in summaries] == tags and all(s["n"] == 10 for s in summaries)
    for s in summaries:
        recs = RecordsFile(out / f"records-{s['setting']}.jsonl").load()
        assert s["accuracy"] == pytest.approx(summarize(recs)["accuracy"])
    md = (out / "summary.md").read_text()
    assert md.count("| v") == 4 and "missing verdict as 0.5" in md and "1 bad items skipped" in md
    skipped = json.loads((out / "problems.json").read_text())["skipped"]
    assert skipped == [f"{src}:13:response_a: empty"]
    for png in ("accuracy_vs_votes.png", "accuracy_vs_budget.png", "tokens_per_comparison.png"):
        assert (out / png).stat().st_size > 1000
    cfg = load(EvalConfig, out / "config.toml")  # the resolved config, written as a recipe
    assert cfg.votes == (1, 3) and cfg.max_think_tokens == (None, 64) and cfg.max_items == 10 and cfg.on_bad == "skip"


def test_recipes_and_overrides(tmp_path):
    from rrm_jax.evaluation.cli import EvalConfig, build_config

    for toml in sorted((ROOT / "eval").glob("*.toml")):
        cfg = build_config(EvalConfig, [str(toml)], "t", "")
        assert cfg.dataset in KINDS, toml
    cfg = build_config(
        EvalConfig,
        [str(ROOT / "eval" / "pandalm.toml"), "--votes", "2,4", "seed=5", "max_think_tokens=none,128", "adaptive=true"],
        "t",
        "",
    )
    assert cfg.votes == (2, 4) and cfg.seed == 5 and cfg.max_think_tokens == (None, 128) and cfg.adaptive
    with pytest.raises(ConfigError, match="vots=3: vots: unknown key; known: "):
        build_config(EvalConfig, ["vots=3"], "t", "")
    with pytest.raises(ConfigError, match="votes=x: votes: expected int, got 'x'"):
        build_config(EvalConfig, ["votes=x"], "t", "")
    with pytest.raises(ConfigError, match="--max-items many: max_items: expected int, got 'many'"):
        build_config(EvalConfig, ["--max-items", "many"], "t", "")
    assert build_config(EvalConfig, ["--mesh", "1,1,8"], "t", "").mesh == (1, 1, 8)
    assert build_config(EvalConfig, [], "t", "").mesh == ()
    from rrm_jax.evaluation.cli import eval_main

    for bad, msg in (
        (["--swap", "maybe"], "swap must be"),
        (["--votes", "0"], "votes must be >= 1"),
        (["--dataset", "mmlu"], "dataset must be one of"),
        ([], "--model is required"),
        (["--max-think-tokens", "-1"], "max_think_tokens must be"),
    ):  # 0 is the direct baseline
        with pytest.raises(ConfigError, match=msg):
            eval_main(bad + ["--out", str(tmp_path)])


def test_judge_and_rank_clis(tmp_path, capsys):
    from rrm_jax.evaluation.cli import judge_main, rank_main
    from rrm_jax.judge import tournament

    data = synthetic(5)
    src = tmp_path / "pairs.jsonl"
    rows = [{"query": r.query, "response_a": r.response_a, "response_b": r.response_b} for r in data]
    rows[0]["label"] = 0
    src.write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = tmp_path / "j.jsonl"
    assert judge_main(["--pairs", str(src), "--out", str(out), "--progress", "false"], judge=OracleJudge(data)) == 0
    recs = RecordsFile(out).load()
    assert len(recs) == 5 and [r["label"] for r in recs] == [0, None, None, None, None]
    assert "accuracy 100.0% on 1 labelled pairs" in capsys.readouterr().out

    class RankJudge(OracleJudge):
        def rank(self, query, candidates, *, strategy, votes, seed, swap):
            return tournament.rank(
                lambda items: self.compare_many(items, votes=votes), query, candidates, strategy=strategy, seed=seed
            )

    quality = ["ok", "best answer", "bad", "good"]
    judge = RankJudge([])
    judge.gold = {}
    for i, a in enumerate(quality):
        for b in quality[i + 1 :]:
            judge.gold[("q", frozenset((a, b)))] = a if len(a) > len(b) else b  # longer = better here
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"id": "x", "query": "q", "candidates": quality}) + "\n")
    out = tmp_path / "r.jsonl"
    assert (
        rank_main(["--queries", str(qs), "--out", str(out), "--strategy", "elo", "--progress", "false"], judge=judge)
        == 0
    )
    rec = RecordsFile(out).load()[0]
    assert rec["best_candidate"] == "best answer" and rec["order"] == [1, 3, 2, 0] and rec["comparisons"] == 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "candidates": ["one"]}) + "\n")
    assert rank_main(["--queries", str(bad), "--out", str(out)], judge=judge) == 2
    assert "bad.jsonl:1:candidates" in capsys.readouterr().err


# ------------------------------------------------------------------ the real Judge on a random tiny model
@pytest.mark.slow
def test_eval_cli_real_judge_tiny_model(shared_dir, tmp_path):
    """`rrm-jax eval` through model loading, truncation, the Judge and the sampler. Random weights never close
    </think> themselves: the budget forces "</think> \\boxed{Assistant " and the digit that follows is random
    text, so verdicts are mostly unparseable (credit 0.5) while the soft score still comes from the probes."""
    from rrm_jax.core.tokenizers import load_tokenizer
    from rrm_jax.data import read_pandalm
    from rrm_jax.evaluation.cli import eval_main
    from rrm_jax.judge.prompt import render_prompt

    tiny = (ROOT / "models" / "tiny.toml").read_text().replace("vocab_size = 512", "vocab_size = 151936")
    model_toml = tmp_path / "tiny-r1vocab.toml"
    model_toml.write_text(tiny + "eos_token_id = 151643\n")
    tok_dir = shared_dir / "tokenizers" / "deepseek-r1-distill-qwen"
    data = shared_dir / "data" / "pandalm" / "testset-v1.json"
    out = tmp_path / "out"
    argv = [
        "--model",
        str(model_toml),
        "--tokenizer",
        str(tok_dir),
        "--mesh",
        "1,1,1",
        "--dtype",
        "float32",
        "--dataset",
        "pandalm",
        "--data",
        str(data),
        "--split",
        "test[:4]",
        "--data-dir",
        str(tmp_path / "tfds"),
        "--out",
        str(out),
        "--votes",
        "2",
        "--max-think-tokens",
        "6",
        "--max-new-tokens",
        "10",
        "--max-prompt-tokens",
        "480",
        "--batch-size",
        "4",
        "--seed",
        "2",
        "--progress",
        "false",
    ]
    assert eval_main(argv) == 0
    tok = load_tokenizer(tok_dir)
    items = read_pandalm(data).records[:4]
    too_long = [len(tok.encode(render_prompt(tok, "rrm", r.query, r.response_a, r.response_b))) > 480 for r in items]
    assert 0 < sum(too_long) < 4
    recs = RecordsFile(out / "records-v2-t6.jsonl").load()
    assert [r["id"] for r in recs] == [r.id for r in items]
    assert [r["truncated"] for r in recs] == too_long
    for row, r in enumerate(recs):
        assert r["samples_drawn"] == 2 and len(r["reasonings"]) == 2 and r["tokens"] > 0 and r["forced"] == 2
        assert all("</think>\n\n\\boxed{Assistant " in t for t in r["reasonings"])
        assert r["orders"] == ["ba" if show_first_b(2, row) else "ab"] * 2
        assert r["votes_a"] + r["votes_b"] + r["invalid"] == 2
        assert 0.0 < r["soft"] < 1.0 and r["soft"] != 0.5
        assert r["credit"] == scoring.credit(r["label"], r["winner"])
    summary = json.loads((out / "summary.json").read_text())[0]
    scored = [r["credit"] for r in recs if r["credit"] is not None]
    assert summary["accuracy"] == pytest.approx(sum(scored) / len(scored))
    assert summary["forced"] == 8 and summary["truncated"] == sum(too_long)
