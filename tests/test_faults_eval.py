"""Faults on the records side of `judge` / `rank` / `eval`: resuming onto other data, two writers, over-long
items, bad JSONL bytes and labels, empty datasets, and flags that must fail before any model loads."""

import json
import types
from pathlib import Path

import pytest

from fakes import FakeGenerate, FakeModel
from rrm_jax.core.errors import ConfigError
from rrm_jax.data import DataError, PairRecord
from rrm_jax.data.records import read_pairs_jsonl, read_queries
from rrm_jax.evaluation import cli
from rrm_jax.evaluation.fit import clamp_generation
from rrm_jax.evaluation.records import RecordsFile, fingerprint_file, lock, meta_path
from rrm_jax.evaluation.run import run_records
from rrm_jax.judge import tournament
from rrm_jax.judge.judge import Judge
from rrm_jax.judge.verdict import Verdict
from rrm_jax.sampler import SamplingConfig
from test_evaluate import OracleJudge


def _pairs(path: Path, tag: str, n: int = 3) -> list[PairRecord]:
    recs = [
        PairRecord(f"{path.stem}-{i + 1}", f"{tag} question {i}", f"{tag} good {i}", f"{tag} bad {i}", 0)
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps({"query": r.query, "response_a": r.response_a, "response_b": r.response_b, "label": 0}) + "\n"
            for r in recs
        )
    )
    return recs


# ---------------------------------------------------------------------------------------------- 1. data keys
def test_judge_refuses_records_of_other_data_and_restart_moves_them_aside(tmp_path, capsys):
    d1 = _pairs(tmp_path / "d1" / "pairs.jsonl", "one")
    d2 = _pairs(tmp_path / "d2" / "pairs.jsonl", "two")
    out = tmp_path / "js" / "v.jsonl"
    args = ["--out", str(out), "--progress", "false"]
    assert cli.judge_main(["--pairs", str(tmp_path / "d1" / "pairs.jsonl"), *args], judge=OracleJudge(d1)) == 0
    first = RecordsFile(out).load()
    judge = OracleJudge(d1 + d2)
    assert cli.judge_main(["--pairs", str(tmp_path / "d2" / "pairs.jsonl"), *args], judge=judge) == 2
    err = capsys.readouterr().err
    assert f"{out}: holds judgements of other data (fingerprint: " in err and "use another --out or --restart" in err
    assert judge.seen == [] and RecordsFile(out).load() == first  # nothing judged, nothing touched
    assert cli.judge_main(["--pairs", str(tmp_path / "d2" / "pairs.jsonl"), *args, "restart=true"], judge=judge) == 0
    assert [q for q, _, _ in judge.seen] == [r.query for r in d2]
    assert RecordsFile(out.with_name("v.jsonl.replaced-1")).load() == first  # the old records kept, renamed
    assert out.with_name("v.jsonl.meta.json.replaced-1").exists()
    assert all(r["winner"] == 0 for r in RecordsFile(out).load())
    # the same data resumes (nothing re-judged)
    again = OracleJudge(d2)
    assert cli.judge_main(["--pairs", str(tmp_path / "d2" / "pairs.jsonl"), *args], judge=again) == 0
    assert again.seen == []


def _eval_args(tmp_path, src, out) -> list[str]:
    """`rrm-jax eval` over a JSONL of pairs, quietly, with its TFDS cache under tmp_path."""
    return [
        "--dataset",
        "jsonl",
        "--data",
        str(src),
        "--out",
        str(out),
        "--progress",
        "false",
        "--plots",
        "false",
        "--data-dir",
        str(tmp_path / "tfds"),
    ]


def test_eval_other_data_under_the_same_name_is_refused_then_restarted(tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    d1 = _pairs(src, "one")
    out = tmp_path / "out"
    args = _eval_args(tmp_path, src, out)
    assert cli.eval_main(args, judge_factory=lambda b: OracleJudge(d1)) == 0
    d2 = _pairs(src, "two")
    assert cli.eval_main(args, judge_factory=lambda b: OracleJudge(d2)) == 2
    assert "holds judgements of other data (fingerprint:" in capsys.readouterr().err
    assert cli.eval_main(args + ["--restart", "true"], judge_factory=lambda b: OracleJudge(d2)) == 0
    assert (out / "records-v1-tnone.jsonl.replaced-1").exists()
    assert [r["id"] for r in RecordsFile(out / "records-v1-tnone.jsonl").load()] == [r.id for r in d2]


def test_eval_another_split_on_the_same_out_is_refused(tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    d1 = _pairs(src, "one")
    out = tmp_path / "out"
    args = _eval_args(tmp_path, src, out)
    assert cli.eval_main(args + ["--split", "test[:2]"], judge_factory=lambda b: OracleJudge(d1)) == 0
    assert cli.eval_main(args + ["--split", "test[2:]"], judge_factory=lambda b: OracleJudge(d1)) == 2
    assert "holds judgements of other data (split: 'test[:2]' there vs 'test[2:]' now)" in capsys.readouterr().err
    assert cli.eval_main(args + ["--split", "test[:2]"], judge_factory=lambda b: OracleJudge(d1)) == 0


# ---------------------------------------------------------------------------------------------- 1b. judge keys
def _checkpoint(path: Path, weights: bytes) -> Path:
    """A directory that passes for a checkpoint to the resume keys (the judge itself is faked)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_resume_is_keyed_on_the_sampling_and_the_weights_not_the_path_spelling(tmp_path, monkeypatch, capsys):
    """Issue 22.2: resuming with another temperature, top-p, generation length or dtype, or with other weights at
    the same path, appended records of the new settings to the old ones; the same checkpoint spelled another way
    was refused. Each is refused now (nothing judged, the records untouched), and the spelling resumes."""
    d = _pairs(tmp_path / "pairs.jsonl", "one")
    ck = _checkpoint(tmp_path / "ck", b"A" * 4096)
    out = tmp_path / "v.jsonl"
    base = ["--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(out), "--progress", "false"]
    assert cli.judge_main(base + ["--model", str(ck)], judge=OracleJudge(d)) == 0
    first = RecordsFile(out).load()
    changes = {"temperature": 1.0, "top_p": 0.9, "top_k": 5, "max_new_tokens": 16, "max_prompt_tokens": 99}
    for key, value in {**changes, "dtype": "float32"}.items():
        judge = OracleJudge(d)
        setting = (
            f"sampling.{key}={value}"
            if key in ("temperature", "top_p", "top_k", "max_new_tokens")
            else f"{key}={value}"
        )
        assert cli.judge_main(base + ["--model", str(ck), setting], judge=judge) == 2, key
        err = capsys.readouterr().err
        assert "this output holds a run with other settings sampling: " in err and f"'{key}': {value!r}" in err, err
        assert judge.seen == [] and RecordsFile(out).load() == first
    (ck / "model.safetensors").write_bytes(b"B" * 4096)  # retrained in place
    judge = OracleJudge(d)
    assert cli.judge_main(base + ["--model", str(ck)], judge=judge) == 2
    assert "other settings weights: " in capsys.readouterr().err and judge.seen == []
    (ck / "model.safetensors").write_bytes(b"A" * 4096)
    monkeypatch.chdir(tmp_path)
    judge = OracleJudge(d)
    assert cli.judge_main(base + ["--model", "./ck/"], judge=judge) == 0  # the same weights, spelled otherwise
    assert judge.seen == [] and RecordsFile(out).load() == first


def test_the_input_is_fingerprinted_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """Issue 22.3: a pairs file edited while the model loaded was judged as read but resumed as edited."""
    path = tmp_path / "pairs.jsonl"
    d1 = _pairs(path, "one")
    (tmp_path / "as-read.jsonl").write_bytes(path.read_bytes())

    def load_while_the_file_is_edited(cfg):
        _pairs(path, "two")
        return OracleJudge(d1)

    monkeypatch.setattr(cli, "_real_judge", load_while_the_file_is_edited)
    out = tmp_path / "v.jsonl"
    args = ["--pairs", str(path), "--out", str(out), "--progress", "false"]
    assert cli.judge_main(args) == 0
    assert json.loads(meta_path(out).read_text())["fingerprint"] == fingerprint_file(tmp_path / "as-read.jsonl")
    assert [r["id"] for r in RecordsFile(out).load()] == [r.id for r in d1]
    judge = OracleJudge(d1)
    monkeypatch.setattr(cli, "_real_judge", lambda cfg: judge)
    assert cli.judge_main(args) == 2  # the edited content was never judged: not a resume
    assert "holds judgements of other data (fingerprint: " in capsys.readouterr().err and judge.seen == []


def test_a_refused_run_stops_before_the_model_loads_and_changes_no_file(tmp_path, monkeypatch, capsys):
    """Issue 22.6 and 22.13: a refused eval rewrote config.toml and problems.json (which then described the refused
    command), and judge, rank, eval and label checked their records only after the model's slow load."""
    src = tmp_path / "pairs.jsonl"
    d = _pairs(src, "one")
    out = tmp_path / "out"
    args = _eval_args(tmp_path, src, out)
    assert cli.eval_main(args, judge_factory=lambda b: OracleJudge(d)) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert out / "config.toml" in files and out / "problems.json" in files
    monkeypatch.setattr(cli, "load_model", lambda opts: pytest.fail("loaded the model"))
    assert cli.eval_main(args + ["--model", "tiny", "seed=7"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    from rrm_jax.evaluation.label import label_main
    from test_label import QUERIES, make_judge

    queries, cands = tmp_path / "q.jsonl", tmp_path / "cands.jsonl"
    _queries(queries, "q")
    cands.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    for main, inp, judge in (
        (cli.judge_main, ["--pairs", str(src)], OracleJudge(d)),
        (cli.rank_main, ["--queries", str(queries)], RankJudge()),
        (label_main, [str(cands)], make_judge()[0]),
    ):
        o = tmp_path / f"{main.__name__}.jsonl"
        assert main(inp + ["--out", str(o), "--progress", "false"], judge=judge) == 0
        files = {p: p.read_bytes() for p in tmp_path.glob(f"{main.__name__}*")}
        assert main(inp + ["--out", str(o), "--progress", "false", "--model", "tiny", "seed=3"]) == 2, main
        assert "other settings" in capsys.readouterr().err
        assert {p: p.read_bytes() for p in tmp_path.glob(f"{main.__name__}*")} == files


# ---------------------------------------------------------------------------------------------- 2. rank
class RankJudge:
    """Always prefers the first candidate shown; remembers the queries it ranked."""

    def __init__(self):
        self.ranked = []

    def rank(self, query, candidates, *, strategy, votes, seed, swap):
        self.ranked.append(query)
        return tournament.rank(
            lambda items: [Verdict(0, 1, 0, 0, 0.9, tokens=1) for _ in items],
            query,
            candidates,
            strategy=strategy,
            seed=seed,
        )


def _queries(path: Path, tag: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"query": f"{tag} {i}", "candidates": ["x", "yy", "zzz"]}) + "\n" for i in range(3))
    )


def test_rank_takes_the_records_lock_and_keys_on_its_queries(tmp_path, capsys):
    q1, q2 = tmp_path / "a" / "q.jsonl", tmp_path / "b" / "q.jsonl"
    _queries(q1, "one")
    _queries(q2, "two")
    out = tmp_path / "rk" / "r.jsonl"
    args = ["--out", str(out), "--progress", "false"]
    judge = RankJudge()
    out.parent.mkdir()
    with lock(out.with_name("r.jsonl.lock")):  # another writer holds it
        assert cli.rank_main(["--queries", str(q1), *args], judge=judge) == 2
    assert "another process is writing these records" in capsys.readouterr().err
    assert not out.exists() and judge.ranked == []
    assert cli.rank_main(["--queries", str(q1), *args], judge=judge) == 0
    assert len(RecordsFile(out).load()) == 3
    assert cli.rank_main(["--queries", str(q2), *args], judge=judge) == 2
    assert "holds judgements of other data" in capsys.readouterr().err
    assert cli.rank_main(["--queries", str(q2), *args, "--restart", "true"], judge=judge) == 0
    assert [r["query"] for r in RecordsFile(out).load()] == ["two 0", "two 1", "two 2"]
    # a records file two old unlocked writers doubled: one line, no traceback
    out.write_text(out.read_text() + out.read_text())
    assert cli.rank_main(["--queries", str(q2), *args], judge=judge) == 2
    assert "duplicate record for id" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- 9. over-long items
def _judge_with_context(ctx: int, **kw):
    model = types.SimpleNamespace(
        tokenizer=FakeModel.tokenizer, config=types.SimpleNamespace(max_position_embeddings=ctx)
    )
    fake = FakeGenerate(FakeModel.tokenizer, lambda first, second, k: ("1" if "GOOD" in first else "2", False, 0.5))

    def gen(model, prompts, cfg, progress=False):  # as strict as the sampler: one long prompt fails the batch
        for i, p in enumerate(prompts):
            if len(model.tokenizer.encode(p)) + cfg.max_new_tokens > ctx:
                raise ValueError(f"prompts[{i}] exceeds the context")
        return fake(model, prompts, cfg, progress)

    gen.calls = fake.calls
    return Judge(model, sampling=SamplingConfig(max_new_tokens=64, temperature=0.6), generate=gen, **kw), gen


def test_summaries_report_no_accuracy_over_items_not_judged(tmp_path, capsys):
    """Issue 22.11: when every item errored (all over the context) `judge` printed "accuracy 50.0%" and `rank`
    "2 queries ranked"; now they say how many were judged and why the rest were not."""
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(_row(id=f"p{i}", query="long " * 400) + "\n" for i in range(3)))
    judge, gen = _judge_with_context(3000)
    assert (
        cli.judge_main(["--pairs", str(pairs), "--out", str(tmp_path / "v.jsonl"), "--progress", "false"], judge=judge)
        == 0
    )
    out = capsys.readouterr().out
    assert "3 pairs -> " in out and ": 0 judged" in out and "3 not judged (e.g. item 'p0'" in out
    assert "accuracy" not in out and gen.calls == []
    mixed = tmp_path / "m.jsonl"
    mixed.write_text(_row(id="a", response_a="GOOD") + "\n" + _row(id="b", query="long " * 400) + "\n")
    assert (
        cli.judge_main(
            ["--pairs", str(mixed), "--out", str(tmp_path / "m-v.jsonl"), "--progress", "false"],
            judge=_judge_with_context(3000)[0],
        )
        == 0
    )
    out = capsys.readouterr().out
    assert ": 1 judged" in out and "1 not judged" in out and "accuracy 100.0% on 1 labelled pairs judged" in out
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "x", "query": "long " * 400, "candidates": ["a", "b"]}) + "\n")
    assert (
        cli.rank_main(
            ["--queries", str(queries), "--out", str(tmp_path / "r.jsonl"), "--progress", "false"],
            judge=_judge_with_context(3000)[0],
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "0 of 1 queries ranked" in out and "1 not ranked (e.g. " in out


def test_an_over_long_item_gets_an_error_record_and_the_run_goes_on(tmp_path):
    items = [PairRecord(f"p{i}", f"q{i}", "GOOD", "bad", 0) for i in range(4)]
    items[2] = PairRecord("p2", "q2 " + "long " * 400, "GOOD", "bad", 0)
    judge, gen = _judge_with_context(3000)
    recs = run_records(judge, items, tmp_path / "r.jsonl", meta={}, swap="none", progress=False)
    assert [r["winner"] for r in recs] == [0, 0, None, 0]
    err = recs[2]["error"]
    assert "item 'p2'" in err and "exceeds the model's context (3000 tokens)" in err
    assert "--max-prompt-tokens 2936" in err
    assert all("error" not in r for r in recs[:2] + recs[3:])
    assert len(gen.calls) == 1 and len(gen.calls[0][0]) == 3  # the long item never reached the sampler
    assert [r["id"] for r in RecordsFile(tmp_path / "r.jsonl").load()] == ["p0", "p1", "p2", "p3"]
    # a resume with the suggested limit judges (truncated) just that item; its record replaces the error
    judge, gen = _judge_with_context(3000, max_prompt_tokens=2936)
    again = run_records(judge, items, tmp_path / "r.jsonl", meta={}, swap="none", progress=False)
    assert len(gen.calls) == 1 and len(gen.calls[0][0]) == 1
    assert again[2]["winner"] == 0 and again[2]["truncated"] and "error" not in again[2]
    assert again[:2] + again[3:] == recs[:2] + recs[3:]
    assert RecordsFile(tmp_path / "r.jsonl").load() == again


def test_generation_length_is_clamped_to_a_short_context(capsys):
    model = types.SimpleNamespace(
        tokenizer=FakeModel.tokenizer, config=types.SimpleNamespace(max_position_embeddings=4096)
    )
    opts = cli.JudgePairsConfig()
    assert opts.sampling.max_new_tokens == 8192
    clamped = clamp_generation(model, opts)
    forced = len(FakeModel.tokenizer.encode(SamplingConfig().forced_suffix))
    assert clamped.sampling.max_new_tokens == 4096 - forced - 1024
    assert "generating at most" in capsys.readouterr().err
    short = cli.JudgePairsConfig(sampling=SamplingConfig(max_new_tokens=512))
    assert clamp_generation(model, short).sampling.max_new_tokens == 512
    model.config.max_position_embeddings = 131072
    assert clamp_generation(model, opts) is opts


def test_judge_with_default_sampling_fits_a_short_context():
    """Issue 22.14: `Judge(model)` asked for 8192 new tokens whatever the context, and raised on a small one; with
    default sampling it now takes what the context holds, as the commands clamp it; an explicit one is kept."""
    model = types.SimpleNamespace(
        tokenizer=FakeModel.tokenizer, config=types.SimpleNamespace(max_position_embeddings=2048)
    )
    judge = Judge(model)
    forced = len(FakeModel.tokenizer.encode(SamplingConfig().forced_suffix))
    assert judge.sampling.max_new_tokens == 2048 - forced - 512 and judge.sampling.temperature == 0.6
    assert Judge(model, max_prompt_tokens=1000).sampling.max_new_tokens == 2048 - forced - 1000
    clamped = clamp_generation(model, cli.JudgePairsConfig()).sampling
    assert clamped.max_new_tokens == judge.sampling.max_new_tokens  # one rule
    mine = SamplingConfig(max_new_tokens=4000)
    assert Judge(model, sampling=mine).sampling is mine
    model.config.max_position_embeddings = 131072
    assert Judge(model).sampling.max_new_tokens == 8192


# ---------------------------------------------------------------------------------------------- 10. JSONL input
def _row(**kw):
    return json.dumps({"query": "q", "response_a": "a", "response_b": "b", "label": 0, **kw})


def test_jsonl_bad_bytes_and_list_labels_are_one_line_errors_or_skipped(tmp_path):
    src = tmp_path / "p.jsonl"
    bad = b'{"id": "x2", "query": "q", "response_a": "a\xff", "response_b": "b", "label": 0}\n'
    src.write_bytes(
        (_row(id="x1") + "\n").encode()
        + bad
        + (_row(id="x3", label=[0]) + "\n").encode()
        + (_row(id="x4", label={"a": 1}) + "\n").encode()
    )
    with pytest.raises(DataError, match=rf"^{src}:2:response_a: not UTF-8 text \(byte 0xff"):
        read_pairs_jsonl(src)
    got = read_pairs_jsonl(src, on_bad="skip")
    assert [r.id for r in got.records] == ["x1"]
    assert [(p.line, p.field) for p in got.problems] == [(2, "response_a"), (3, "label"), (4, "label")]
    src.write_bytes((_row(label=[0]) + "\n").encode())
    with pytest.raises(DataError, match=rf"^{src}:1:label: expected 0, 1"):
        read_pairs_jsonl(src)
    qs = tmp_path / "q.jsonl"
    qs.write_bytes(b'{"query": "\xfe", "candidates": ["a", "b"]}\n')
    with pytest.raises(DataError, match=rf"^{qs}:1:query: not UTF-8 text"):
        read_queries(qs)


def test_eval_on_an_empty_dataset_is_one_line(tmp_path, capsys):
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    args = _eval_args(tmp_path, src, tmp_path / "out")
    assert cli.eval_main(args, judge_factory=lambda b: pytest.fail("judged an empty dataset")) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rrm-jax eval: {src}: no pairs to judge (the file holds no items)"
    src.write_text(_row(response_a="") + "\n")
    assert cli.eval_main(args + ["--on-bad", "skip"], judge_factory=lambda b: None) == 2
    assert "no pairs left to judge: all 1 items are bad" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- 11. flags
@pytest.mark.parametrize(
    "flags, msg",
    [
        (["--temperature", "-1"], "^--temperature -1.0: must be >= 0"),
        (["--top-p", "0"], r"^--top-p 0.0: must lie in \(0, 1\]"),
        (["--max-new-tokens", "0"], "^--max-new-tokens 0: must be >= 1"),
        (["--dtype", "float33"], "dtype 'float33' is not a dtype"),
        (["--model", "/nonexistent"], "--model /nonexistent: not a checkpoint directory"),
        (["--max-prompt-tokens", "-3"], "max_prompt_tokens must be"),
        (["--tokenizer", "/nonexistent-tok"], "--tokenizer /nonexistent-tok: no such directory"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "judge", "rank"])
def test_bad_flags_fail_before_anything_loads(tmp_path, monkeypatch, command, flags, msg):
    monkeypatch.setattr(cli, "load_model", lambda opts: pytest.fail("loaded a model"))
    src = tmp_path / "p.jsonl"
    src.write_text(_row() + "\n")
    base = {
        "eval": ["--dataset", "jsonl", "--data", str(src), "--data-dir", str(tmp_path / "tfds")],
        "judge": ["--pairs", str(src)],
        "rank": ["--queries", str(src)],
    }[command]
    main = {"eval": cli.eval_main, "judge": cli.judge_main, "rank": cli.rank_main}[command]
    model = [] if "--model" in flags else ["--model", "tiny"]
    with pytest.raises(ConfigError, match=msg):
        main(base + model + flags + ["--out", str(tmp_path / "out")])
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- the same, nearby
def test_corrupt_meta_or_records_bytes_are_one_line(tmp_path, capsys):
    d1 = _pairs(tmp_path / "pairs.jsonl", "one")
    out = tmp_path / "v.jsonl"
    args = ["--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(out), "--progress", "false"]
    assert cli.judge_main(args, judge=OracleJudge(d1)) == 0
    good = out.read_bytes()
    out.with_name("v.jsonl.meta.json").write_text('{"dataset": ')
    assert cli.judge_main(args, judge=OracleJudge(d1)) == 2
    assert "v.jsonl.meta.json: corrupt run meta" in capsys.readouterr().err
    assert cli.judge_main(args + ["--restart", "true"], judge=OracleJudge(d1)) == 0
    out.write_bytes(good.replace(b"pairs-2", b"pairs-\xff"))
    assert cli.judge_main(args, judge=OracleJudge(d1)) == 2
    assert f"{out}:2: corrupt record (not UTF-8)" in capsys.readouterr().err


def test_list_ids_and_unreadable_parquet_are_one_line(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(_row(id=["a"]) + "\n")
    with pytest.raises(DataError, match=rf"^{src}:1:id: expected an int or string, got list"):
        read_pairs_jsonl(src)
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"id": {"x": 1}, "query": "q", "candidates": ["a", "b"]}) + "\n")
    with pytest.raises(DataError, match=rf"^{qs}:1:id: expected an int or string, got dict"):
        read_queries(qs)
    pq = tmp_path / "rb.parquet"
    pq.write_bytes(b"PAR1 not really parquet")
    pytest.importorskip("pyarrow")
    from rrm_jax.data.records import read_rewardbench

    with pytest.raises(DataError, match=rf"^{pq}: cannot read parquet"):
        read_rewardbench(pq)


def test_outputs_sharing_a_stem_keep_apart_and_old_meta_names_are_adopted(tmp_path, capsys):
    """Issue 22.7: `--out x.json` and `--out x.jsonl` shared `x.meta.json`, so `--restart` of one moved the other's
    meta aside and it could no longer resume. An output written under the old name still resumes."""
    d1 = _pairs(tmp_path / "pairs.jsonl", "one")
    a, b = tmp_path / "x.jsonl", tmp_path / "x.json"
    for out in (a, b):
        assert (
            cli.judge_main(
                ["--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(out), "--progress", "false"],
                judge=OracleJudge(d1),
            )
            == 0
        )
    restart = ["--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(b), "--progress", "false", "--restart", "true"]
    assert cli.judge_main(restart, judge=OracleJudge(d1)) == 0
    again = OracleJudge(d1)
    assert (
        cli.judge_main(["--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(a), "--progress", "false"], judge=again)
        == 0
    )
    assert again.seen == []  # a resumed: its meta was not touched by b's restart
    # an output from before the rename: its meta at <stem>.meta.json is adopted when no other output owns the stem
    old = tmp_path / "old" / "v.jsonl"
    old.parent.mkdir()
    assert (
        cli.judge_main(
            ["--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(old), "--progress", "false"], judge=OracleJudge(d1)
        )
        == 0
    )
    old.with_name("v.jsonl.meta.json").rename(old.with_name("v.meta.json"))
    again = OracleJudge(d1)
    assert (
        cli.judge_main(
            ["--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(old), "--progress", "false"], judge=again
        )
        == 0
    )
    assert again.seen == [] and old.with_name("v.jsonl.meta.json").exists()


def test_unknown_prompt_and_impossible_mesh_are_one_line(tmp_path, capsys):
    """Issue 22.9: `--prompt nosuch` and `--mesh 4,4,4` were tracebacks; both are one line, rc 2 (the prompt
    before the model loads)."""
    from rrm_jax.cli import main
    from rrm_jax.core.sharding import make_mesh

    pairs = tmp_path / "p.jsonl"
    pairs.write_text(_row() + "\n")
    argv = ["judge", "--pairs", str(pairs), "--out", str(tmp_path / "v.jsonl"), "--model", "tiny"]
    assert main([*argv, "--prompt", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown judge prompt 'nosuch'; registered: [" in err
    with pytest.raises(ConfigError, match=r"mesh shape \(4, 4, 4\) needs 64 devices, have 8"):
        make_mesh((4, 4, 4))


def test_tokenizerless_models_surrogates_and_bad_prompt_bytes_are_one_line(tmp_path, capsys):
    """Issue 22.9: `rank --model tiny` without a tokenizer, a lone surrogate ("\\ud800") in a JSONL, invalid UTF-8
    in `generate --prompt` and `--prompt 'ids:1,x'` (which said the model had no tokenizer) were tracebacks or
    wrong; each is one line naming the field, rc 2."""
    from rrm_jax.cli import main

    queries = tmp_path / "q.jsonl"
    _queries(queries, "q")
    assert main(["rank", "--queries", str(queries), "--out", str(tmp_path / "r.jsonl"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model tiny: has no tokenizer; pass --tokenizer DIR" in err, err
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"query": "q\\ud800", "response_a": "a", "response_b": "b", "label": 0}\n')
    with pytest.raises(DataError, match=r"p.jsonl:1:query: a lone surrogate \('\\ud800'\) at character 1"):
        read_pairs_jsonl(pairs)
    queries.write_text('{"query": "q", "candidates": ["x", "\\udc80y"]}\n')
    with pytest.raises(DataError, match=r"q.jsonl:1:candidates\[1\]: a lone surrogate"):
        read_queries(queries)
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # how Python hands over argv bytes that are not UTF-8
    assert main(["generate", "--model", "tiny", "--prompt", bad]) == 2
    assert "--prompt: not UTF-8 text (byte 0xe9 at character 3)" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny", "--prompt", "ids:1,x"]) == 2
    assert "--prompt 'ids:1,x': 'ids:' takes integer token ids separated by commas or spaces" in capsys.readouterr().err


def test_outputs_that_cannot_hold_records_are_one_line(tmp_path, capsys):
    """Issue 22.9: `--out` that is a directory, /dev/null (which also left /dev/null.meta.json) or unwritable
    (as root only a pseudo file system refuses: /proc), and eval's `--out` an existing file, were tracebacks."""
    from rrm_jax.cli import main

    pairs = tmp_path / "p.jsonl"
    pairs.write_text(_row() + "\n")
    judge = ["judge", "--pairs", str(pairs), "--model", "tiny", "--tokenizer", "bytes", "--out"]
    for out, msg in ((str(tmp_path), "not a regular file"), ("/dev/null", "--out /dev/null: not a regular file")):
        assert main(judge + [out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    assert not Path("/dev/null.meta.json").exists()
    assert main(judge + ["/proc/rrm-jax-test/v.jsonl"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rrm-jax judge: /proc/rrm-jax-test"), err
    ev = ["eval", "--dataset", "jsonl", "--data", str(pairs), "--model", "tiny", "--out", str(pairs)]
    assert main(ev) == 2
    assert "is a file; `rrm-jax eval` writes a directory" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_while_records_are_written_names_the_file(tmp_path):
    """Issue 22.9: a full disk failed in write/flush with an OSError naming no file, so the one line said only
    "No space left on device". /dev/full fails every write as a full disk does."""
    import errno

    with pytest.raises(OSError) as e:
        RecordsFile("/dev/full").append([{"id": "a", "winner": 1}])
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"


def test_python_api_bad_values_say_what_is_wrong():
    """Issue 22.9: `judge.rank("q", "abc")` ranked a string as 3 candidates; `votes=2.5` and `init(seed=1.5)`
    were bare TypeErrors from deep inside."""
    import rrm_jax

    gen = FakeGenerate(FakeModel.tokenizer, lambda first, second, k: ("1", False, 0.5))
    judge = Judge(FakeModel(), sampling=SamplingConfig(max_new_tokens=8), generate=gen)
    with pytest.raises(TypeError, match="candidates must be a sequence of strings, got str 'abc'"):
        judge.rank("q", "abc")
    with pytest.raises(TypeError, match="candidates must be a sequence of strings"):
        judge.rank_many(["q"], [["a", 3]])
    for votes in (2.5, 0, True):
        with pytest.raises(ValueError, match=f"votes must be an integer >= 1, got {votes!r}"):
            judge.compare("q", "a", "b", votes=votes)
    with pytest.raises(ConfigError, match=r"init\(seed=1.5\): the seed must be an integer"):
        rrm_jax.init("tiny", seed=1.5)
