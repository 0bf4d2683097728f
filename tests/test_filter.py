"""`rrm-jax filter`: the RRM authors' difficulty filter (drop the pairs a judge gets right in all k samples)."""

from __future__ import annotations

import json

import pytest

from rrm_jax.evaluation.filter import filter_main
from rrm_jax.judge.verdict import Verdict


class CountingJudge:
    """Pair i's chosen ("right ...") wins exactly ``i % 5`` of the samples, whichever order it is shown in."""

    def __init__(self, crash_after=None):
        self.calls, self.crash_after, self.judged = 0, crash_after, []
        self.sampling = type("S", (), {"max_new_tokens": 64, "max_think_tokens": None})()

    def compare_many(self, pairs, *, votes=1, swap="none", seed=0, adaptive=False, progress=False):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise RuntimeError("killed")
        self.calls += 1
        out = []
        for q, first, _ in pairs:
            self.judged.append(q)
            right = int(q.split()[1]) % 5
            mine = right if first.startswith("right") else votes - right  # samples that pick `first`
            picks = [0] * min(mine, votes) + [1] * (votes - min(mine, votes))
            out.append(
                Verdict(winner=None if 2 * mine == votes else int(2 * mine < votes), votes_a=picks.count(0),
                        votes_b=picks.count(1), invalid=0, soft=picks.count(0) / votes, reasonings=[""] * votes,
                        orders=["ab"] * votes, tokens=votes, samples_drawn=votes, sample_verdicts=picks)
            )  # fmt: skip
        return out


def _pairs(path, n=20):
    rows = [{"query": f"question {i} ?", "chosen": f"right {i}", "rejected": f"wrong {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_keeps_the_pairs_not_right_in_every_sample_with_their_pass_counts(tmp_path, capsys):
    _pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "kept.jsonl"
    args = [str(tmp_path / "pairs.jsonl"), "--samples", "4", "--out", str(out), "--progress", "false"]
    assert filter_main(args, judge=CountingJudge()) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(k["chosen"], k["passes"]) for k in kept] == [(f"right {i}", i % 5) for i in range(20) if i % 5 < 4]
    assert all(k["samples"] == 4 and k["rejected"] == f"wrong {k['chosen'].split()[1]}" for k in kept)
    said = capsys.readouterr().out
    assert "20 pairs, 4 verdicts each -> 16 kept" in said and "4 dropped (right in all)" in said
    # the output is a GRPO recipe's data.path as it is
    from rrm_jax.core.tokenizers import byte_tokenizer
    from rrm_jax.judge.prompt import make_render
    from rrm_jax.training.data import read_training_pairs

    pairs, rep = read_training_pairs(out, byte_tokenizer(), make_render(byte_tokenizer(), "short"), 512)
    assert rep["kept"] == 16 and pairs[0] == {"query": "question 0 ?", "chosen": "right 0", "rejected": "wrong 0"}


def test_a_killed_filter_resumes_and_writes_each_pair_once(tmp_path):
    _pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "kept.jsonl"
    args = [str(tmp_path / "pairs.jsonl"), "--samples", "4", "--out", str(out), "--progress", "false"]
    args += ["--batch-size", "6"]
    with pytest.raises(RuntimeError, match="killed"):
        filter_main(args, judge=CountingJudge(crash_after=2))
    again = CountingJudge()
    assert filter_main(args, judge=again) == 0
    assert len(again.judged) == 20 - 12  # the two chunks recorded before the kill are not judged again
    clean = tmp_path / "clean.jsonl"
    assert filter_main([*args[:-4], "--out", str(clean), "--batch-size", "6"], judge=CountingJudge()) == 0
    assert out.read_text() == clean.read_text()


def test_reads_the_authors_verl_rows_and_refuses_an_output_it_did_not_write(tmp_path, capsys):
    rows = [{"question": f"question {i} ?", "response1": f"wrong {i}", "response2": f"right {i}", "answer": "2"}
            for i in range(5)]  # fmt: skip
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    mine = tmp_path / "mine.jsonl"
    mine.write_text("precious\n")
    assert filter_main([str(data), "--out", str(mine), "--progress", "false"], judge=CountingJudge()) == 2
    assert "was not written by rrm-jax filter" in capsys.readouterr().err and mine.read_text() == "precious\n"
    out = tmp_path / "kept.jsonl"
    assert (
        filter_main([str(data), "--samples", "4", "--out", str(out), "--progress", "false"], judge=CountingJudge()) == 0
    )
    assert [json.loads(line)["chosen"] for line in out.read_text().splitlines()] == [f"right {i}" for i in range(4)]
