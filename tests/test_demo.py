"""`rrm-jax demo --quick`: the whole pipeline (tokenizer, SFT, GRPO via the Trainer and sampler, Judge voting,
knockout) runs and writes its files; GRPO should raise held-out judge accuracy."""

import json

import numpy as np
import pytest

from rrm_jax import demo_task as task
from rrm_jax.judge.parse import parse_verdict
from rrm_jax.judge.prompt import render_prompt


def test_tokenizer_and_traces_use_the_real_format():
    tok = task.build_tokenizer()
    text = "\\boxed{Assistant 1}"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    prompt = render_prompt(tok, task.DEMO_PROMPT, "3+4=?", "7", "8")
    assert prompt.endswith("<think>\n") and len(tok.encode(prompt, add_special_tokens=False)) <= 64
    for p in task.all_pairs():
        assert p.problem.answer == eval(p.query[:-2])  # the label is the true result
        for first, second, want in ((p.chosen, p.rejected, 0), (p.rejected, p.chosen, 1)):
            trace = task.reasoning(p.problem, first, second)
            assert parse_verdict(trace) == want  # the trace's verdict is the right one, read by the real parser
            assert tok.decode(tok.encode(trace, add_special_tokens=False)) == trace
    # a teacher error writes the wrong candidate as the result and so picks it
    p = task.all_pairs()[0]
    assert parse_verdict(task.reasoning(p.problem, p.chosen, p.rejected, computed=p.wrong)) == 1


def test_split_is_disjoint_and_candidates_hold_one_answer():
    train, held = task.split_pairs(0)
    assert not set(train) & set(held) and len(train) + len(held) == len(task.all_pairs())
    rng = np.random.default_rng(0)
    for prob in task.all_problems():
        c = task.knockout_candidates(prob, 4, rng)
        assert len(set(c)) == 4 and c.count(str(prob.answer)) == 1


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from rrm_jax.demo import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["--quick", "--out", str(out), "--seed", "0", "--no-plot"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_quick_demo_writes_results(quick_run):
    out, s = quick_run
    for k in ("accuracy_before_grpo", "accuracy_after_grpo", "accuracy_voting", "seconds"):
        assert k in s
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"sft", "eval", "grpo"}
    assert s["accuracy_before_grpo"] > 0.6  # the warm start learned the task's format and part of its facts
