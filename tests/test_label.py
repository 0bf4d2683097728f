"""`rrm-jax label`: a scripted judge of known preferences (each candidate carries a hidden quality; the judge's
P(first better) is sigmoid of the quality gap) gives pairs whose winners, votes and confidences are known in closed
form; the confidence filter, one compare_many per chunk, resume after a kill, refiltering without judging, bad input
and the hand-off to mode = "dpo"."""

from __future__ import annotations

import json
import math

import pytest

from fakes import FakeGenerate, FakeModel
from rrm_jax.evaluation.label import label_main
from rrm_jax.judge import Judge
from rrm_jax.sampler import SamplingConfig

# candidate "text #q": quality q; the last query's candidates carry no quality (a judge with only position bias)
QUERIES = [
    {"id": "a", "query": "Which is best?", "candidates": ["one #0", "two #3", "three #1"]},
    {"id": "b", "query": "Pick one", "candidates": ["x #2", "y #2.5"]},
    {"id": "c", "query": "More?", "candidates": ["p #1", "q #4", "r #0", "s #2"]},
    {"id": "d", "query": "Biased", "candidates": ["left", "right"]},
]


def quality(text: str) -> float | None:
    return float(text.split("#")[1]) if "#" in text else None


def policy(first: str, second: str, k: int):
    """(verdict digit, forced, P(first better)): prefers the higher quality; without qualities always says 1."""
    q1, q2 = quality(first), quality(second)
    if q1 is None:
        return "1", False, 0.8
    p1 = 1 / (1 + math.exp(-(q1 - q2)))
    return ("1" if q1 > q2 else "2"), False, p1


def make_judge(probes=True):
    gen = FakeGenerate(FakeModel.tokenizer, policy, probes)
    return Judge(FakeModel(), sampling=SamplingConfig(max_new_tokens=64, temperature=0.6), generate=gen), gen


def expected(min_confidence: float):
    """(kept pairs as (query id, chosen, rejected, confidence), number dropped for low confidence), closed form."""
    kept, dropped = [], 0
    for q in QUERIES[:3]:
        c = q["candidates"]
        for i in range(len(c)):
            for j in range(i + 1, len(c)):
                d = quality(c[i]) - quality(c[j])
                conf = math.tanh(abs(d) / 2)  # |2 sigmoid(d) - 1|
                w, l = (c[i], c[j]) if d > 0 else (c[j], c[i])
                if conf >= min_confidence:
                    kept.append((q["id"], w, l, conf))
                else:
                    dropped += 1
    return kept, dropped


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    return path


def read(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def run(data, out, judge, *extra):
    return label_main([str(data), "--out", str(out), "--progress", "false", "--votes", "2", *extra], judge=judge)


def test_labels_follow_the_judge_with_closed_form_confidence(data, tmp_path, capsys):
    judge, gen = make_judge()
    out = tmp_path / "pairs.jsonl"
    assert run(data, out, judge, "--min-confidence", "0.3") == 0
    want, dropped = expected(0.3)
    got = read(out)
    assert [(p["id"], p["chosen"], p["rejected"]) for p in got] == [w[:3] for w in want]
    for p, w in zip(got, want):
        assert p["confidence"] == pytest.approx(w[3], abs=1e-6)
        assert (p["votes_chosen"], p["votes_rejected"]) == (4, 0)  # 2 votes x both orders, unanimous
        assert p["query"] == next(q["query"] for q in QUERIES if q["id"] == p["id"])
    assert 0 < dropped < len(want) + dropped  # the threshold both keeps and drops some (1 - 0.5 = gap 0.5 drops)
    msg = capsys.readouterr().out
    assert f"-> {len(want)} pairs" in msg and f"dropped {dropped} below" in msg and "1 undecided" in msg
    # one generate call for all 3 + 1 + 6 + 1 comparisons (one compare_many), each prompt in both orders, 2 votes
    assert len(gen.calls) == 1 and len(gen.calls[0][0]) == 2 * 11 and gen.calls[0][1].n == 2
    # every comparison is on record, the position-biased one undecided (its votes tie, its soft score is 0.5)
    recs = read(tmp_path / "pairs.records.jsonl")
    assert [r["id"] for r in recs] == ["a", "b", "c", "d"]
    biased = recs[3]["comparisons"][0]
    assert biased["winner"] is None and (biased["votes_i"], biased["votes_j"]) == (2, 2)
    assert biased["soft"] == pytest.approx(0.5)

    # the output feeds mode = "dpo" as it is
    from rrm_jax.core.tokenizers import byte_tokenizer
    from rrm_jax.training.dpo import read_dpo_pairs

    items, report = read_dpo_pairs(out, byte_tokenizer(), max_len=256)
    assert report["kept"] == len(want) and [i["chosen"] for i in items] == [w[1] for w in want]


def test_without_soft_scores_confidence_comes_from_votes(data, tmp_path):
    judge, _ = make_judge(probes=False)
    out = tmp_path / "pairs.jsonl"
    assert run(data, out, judge) == 0
    got = read(out)
    want, _ = expected(0.0)
    assert [(p["chosen"], p["rejected"]) for p in got] == [w[1:3] for w in want]
    assert all(p["confidence"] == 1.0 for p in got)  # unanimous votes: the vote share is 1


def test_resume_after_a_kill_and_refilter_without_judging(data, tmp_path):
    ref_out = tmp_path / "ref" / "pairs.jsonl"
    ref_out.parent.mkdir()
    assert run(data, ref_out, make_judge()[0], "--batch-size", "4") == 0

    class Killed(Exception):
        pass

    judge, gen = make_judge()
    real = judge._generate

    def dies_on_second_chunk(*a, **k):
        if len(gen.calls) >= 1:
            raise Killed
        return real(*a, **k)

    judge._generate = dies_on_second_chunk
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(Killed):  # chunks of ~4 comparisons: {a, b} then {c}: killed before c is judged
        run(data, out, judge, "--batch-size", "4")
    assert [r["id"] for r in read(tmp_path / "pairs.records.jsonl")] == ["a", "b"]
    assert len(read(out)) == 4  # a's 3 pairs and b's one, written as they were judged

    again, gen2 = make_judge()
    assert run(data, out, again, "--batch-size", "4") == 0
    seen = {q for prompts, _ in gen2.calls for q in prompts}
    assert not any("Which is best?" in p or "Pick one" in p for p in seen)  # a and b were not judged again
    assert out.read_text() == ref_out.read_text()  # same pairs as an uninterrupted run, none twice

    idle, gen3 = make_judge()  # everything judged: another threshold only refilters the records
    assert run(data, out, idle, "--batch-size", "4", "--min-confidence", "0.5") == 0
    assert gen3.calls == [] and len(read(out)) == len(expected(0.5)[0])
    # other settings on the same records are refused, with the way out named
    assert run(data, out, make_judge()[0], "--batch-size", "4", "--seed", "3") == 2


@pytest.mark.parametrize(
    "line, where",
    [
        ('{"query": "q", "candidates": ["only one"]}', "cands.jsonl:2:candidates"),
        ('{"candidates": ["a", "b"]}', "cands.jsonl:2:query"),
        ("{oops", "cands.jsonl:2: malformed JSON"),
    ],
)
def test_bad_input_names_file_line_field(tmp_path, line, where, capsys):
    path = tmp_path / "cands.jsonl"
    path.write_text(json.dumps(QUERIES[0]) + "\n" + line + "\n")
    assert run(path, tmp_path / "out.jsonl", make_judge()[0]) == 2
    assert where in capsys.readouterr().err


def test_config_errors():
    from rrm_jax.core.errors import ConfigError

    with pytest.raises(ConfigError, match="DATA is required"):
        label_main(["--out", "x.jsonl"], judge=make_judge()[0])
    with pytest.raises(ConfigError, match=r"--min-confidence must lie in \[0, 1\], got 1.5"):
        label_main(["d.jsonl", "--min-confidence", "1.5"], judge=make_judge()[0])


def test_out_that_is_the_input_or_a_foreign_file_is_refused_untouched(data, tmp_path, capsys):
    """Issue 22.1: `label x.jsonl --out x.jsonl` replaced the input with 0 pairs, and an unrelated existing
    `--out notes.txt` was emptied; both are refused in one line before anything is judged or written."""
    judge, gen = make_judge()
    before = data.read_bytes()
    assert run(data, data, judge) == 2
    assert "is the input DATA" in capsys.readouterr().err and data.read_bytes() == before
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert run(data, notes, judge) == 2
    err = capsys.readouterr().err
    assert "exists and was not written by rrm-jax label" in err and err.count("\n") == 1
    assert notes.read_text() == "my notes\n" and gen.calls == []
    assert run(data, notes, judge, "--restart", "true") == 0  # asked for: the old file is moved aside, not lost
    assert (tmp_path / "notes.txt.replaced-1").read_text() == "my notes\n"
    assert run(data, tmp_path, judge) == 2 and "is a directory" in capsys.readouterr().err


def test_outputs_that_share_a_stem_keep_their_own_records(data, tmp_path):
    """Issue 22.7: `x.json` and `x.jsonl` shared one sidecar; now each output's is named from its whole name."""
    from rrm_jax.evaluation.label import records_path
    from rrm_jax.evaluation.records import meta_path

    a, b = tmp_path / "x.jsonl", tmp_path / "x.json"
    assert records_path(a) != records_path(b) and meta_path(records_path(a)) != meta_path(records_path(b))
    assert run(data, a, make_judge()[0]) == 0 and run(data, b, make_judge()[0]) == 0
    assert run(data, b, make_judge()[0], "--restart", "true") == 0  # moves b's records and meta aside only
    judge, gen = make_judge()
    assert run(data, a, judge) == 0 and gen.calls == []  # a resumes: nothing judged again
    assert read(a) == read(b)
