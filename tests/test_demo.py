"""`rrm-jax demo --quick`: the whole pipeline (tokenizer, SFT, GRPO via the Trainer and sampler, Judge voting,
knockout) runs and writes its files, and GRPO raises held-out judge accuracy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rrm_jax.core.tokenizers import char_tokenizer
from rrm_jax.demo import QUICK, task
from rrm_jax.judge.parse import parse_verdict
from rrm_jax.judge.prompt import DEMO_PROMPT, render_prompt


def test_tokenizer_and_traces_use_the_real_format():
    tok = char_tokenizer()
    text = "\\boxed{Assistant 1}"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    prompt = render_prompt(tok, DEMO_PROMPT, "3+4=?", "7", "8")
    assert prompt.endswith("<think>\n") and len(tok.encode(prompt, add_special_tokens=False)) <= 64
    for p in task.all_pairs():
        assert p.problem.answer == eval(p.query[:-2])  # the label is the true result
        for first, second, want in ((p.chosen, p.rejected, 0), (p.rejected, p.chosen, 1)):
            trace = task.reasoning(p.problem, first, second)
            assert parse_verdict(trace) == want  # the trace's verdict is the right one, read by the real parser
            assert tok.decode(tok.encode(trace, add_special_tokens=False)) == trace
    assert task.reasoning(task.ArithmeticProblem(3, 4), "8", "7").startswith("3+4=4+3=5+2=6+1=7\n1:8-7=1\n")
    assert task.chain(task.ArithmeticProblem(5, 0, "-")) == "5-0=5"
    assert task.chain(task.ArithmeticProblem(8, 3, "-")) == "8-3=7-2=6-1=5"
    assert parse_verdict(task.snap_judgment(2)) == 1


def test_split_is_disjoint_and_candidates_hold_one_answer():
    train, held = task.split_pairs(0)
    assert not set(train) & set(held) and len(train) + len(held) == len(task.all_pairs())
    rng = np.random.default_rng(0)
    for prob in task.all_problems():
        c = task.knockout_candidates(prob, 4, rng)
        assert len(set(c)) == 4 and c.count(str(prob.answer)) == 1


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A finished ``rrm-jax demo --quick`` (seed 0). CI's first stage runs exactly that from a user's install and
    names its output directory in ``RRM_JAX_DEMO_RUN``: its results are checked here instead of paying for the
    same run again. Without the variable the demo runs here as a user runs it (its own process, without the
    suite's XLA flags, which change its figures)."""
    given = os.environ.get("RRM_JAX_DEMO_RUN")
    if given:
        out = Path(given)
        assert (out / "summary.json").is_file(), f"RRM_JAX_DEMO_RUN={given}: no finished demo there"
    else:
        out = tmp_path_factory.mktemp("demo")
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        cmd = [sys.executable, "-m", "rrm_jax.cli", "demo", "--quick", "--out", str(out), "--seed", "0", "--no-plot"]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_quick_demo_writes_results(quick_run):
    out, s = quick_run
    for k in ("accuracy_before_grpo", "accuracy_after_grpo", "accuracy_voting", "seconds"):
        assert k in s
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {
        "sft",
        "eval",
        "grpo",
        "policy_sft",
        "policy_grpo",
        "policy_eval",
        "policy_bon",
    }
    assert (out / "judge" / "config.json").exists()  # what `--stage policy` starts from
    from rrm_jax.core.configs import load
    from rrm_jax.demo import Recipe

    assert load(Recipe, out / "recipe.toml") == Recipe(**QUICK)  # the resolved recipe, beside the outputs
    assert s["accuracy_before_grpo"] > 0.55  # the warm start learned the format and (when it thinks) the arithmetic


@pytest.mark.slow
def test_quick_demo_grpo_raises_heldout_accuracy_by_teaching_it_to_think(quick_run):
    """30 GRPO steps on the outcome reward alone: held-out pairs (never trained on) are judged better, because
    the policy reasons before its verdict far more often (seed 0, the run CI makes, on a 2-core AMD EPYC without
    AVX-512: 0.562 -> 0.889 and 31% -> 91%)."""
    _, s = quick_run
    assert s["accuracy_after_grpo"] >= s["accuracy_before_grpo"] + 0.10
    assert s["thinking_after_grpo"] >= s["thinking_before_grpo"] + 0.30
    assert s["accuracy_voting"] >= s["accuracy_after_grpo"] - 0.05  # 3-vote majority is no worse than one vote
    assert [c["step"] for c in s["curve"]] == [0, 15, 30]


@pytest.mark.slow
def test_quick_demo_feedback_loop_raises_the_policy_on_judge_verdicts_alone(quick_run):
    """The separate policy, post-trained only on the judge's knockout verdicts, is right more often on held-out
    questions after each cycle (seed 0, the same run: 0.483 -> 0.525 -> 0.679 -> 0.679 -> 0.812), and the
    judge's best-of-8 picks beat a random pick and the majority answer among the warm-started policy's samples."""
    _, s = quick_run
    before, cycles = s["policy_accuracy_before"], s["policy_accuracy_cycles"]
    assert len(cycles) == QUICK["cycles"] and s["policy_accuracy_after"] == cycles[-1]
    assert cycles[-1] >= before + 0.20
    assert all(b >= a - 0.03 for a, b in zip([before] + cycles, cycles))  # rising, up to sampling noise
    bon = s["bon_accuracy"]
    assert set(bon) == {"knockout", "elo", "random", "majority", "oracle"} and s["bon_n"] == 8
    for judged in ("knockout", "elo"):
        assert bon[judged] > bon["random"] + 0.15 and bon[judged] > bon["majority"] and bon[judged] <= bon["oracle"]


@pytest.mark.slow(50)
def test_the_saved_judge_judges_from_a_fresh_process(quick_run, tmp_path):
    """What the README's first command leaves is a judge every command can use: `rrm-jax judge` in a new process
    on OUT/judge (its saved tokenizer, through AutoTokenizer) and the held-out pairs gets the demo's accuracy
    (issue 22.8: with the tokenizer AutoTokenizer had mangled, 0.44 against the demo's 0.975)."""
    out, s = quick_run
    cmd = [sys.executable, "-m", "rrm_jax.cli", "judge", "--model", str(out / "judge"), "--prompt", "demo"]
    cmd += ["--pairs", str(out / "heldout.jsonl"), "--out", str(tmp_path / "verdicts.jsonl"), "--votes", "3"]
    cmd += ["--temperature", "0.7", "--max-new-tokens", "64", "--dtype", "float32", "--mesh", "1,1,1"]
    run = subprocess.run(cmd + ["--progress", "false"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    n = len((out / "heldout.jsonl").read_text().splitlines())
    assert f"{n} pairs -> " in run.stdout and f"on {n} labelled pairs judged" in run.stdout, run.stdout
    accuracy = float(run.stdout.split("accuracy ")[1].split("%")[0]) / 100
    # the same 3-vote majority over the same pairs, sampled in another process (other seeds' draws): within noise
    assert abs(accuracy - s["accuracy_voting"]) <= 0.10, (accuracy, s["accuracy_voting"])


def test_careless_chains_end_where_their_slip_leads():
    tok = char_tokenizer()
    from rrm_jax.data.answers import math_answer

    for p in task.all_problems():
        assert task.careless_chain(p) == task.chain(p)
        for d in task.slips(p):
            text = task.policy_answer(p, d)
            assert math_answer(text) == str(p.answer + d)  # a first-step slip carries through to the result
            assert text.split("\n")[0].split("=")[0] == p.query[:-2]
            assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert task.policy_answer(task.ArithmeticProblem(3, 4), 1) == "3+4=5+3=6+2=7+1=8\n</think>\n\n\\boxed{8}"
    train, held = task.split_problems(0, 30)
    assert len(held) == 30 and not set(train) & set(held) and len(train) + 30 == len(task.all_problems())


def test_recipe_file_matches_defaults_and_bad_fields_are_named(tmp_path):
    from pathlib import Path

    from rrm_jax.core.configs import dump_toml, load
    from rrm_jax.core.errors import ConfigError
    from rrm_jax.demo import QUICK, Recipe, load_recipe

    shipped = Path(__file__).resolve().parents[1] / "train" / "demo.toml"
    assert load_recipe(shipped) == Recipe()  # the documented recipe is the one that runs
    assert load_recipe("demo") == Recipe()  # `rrm-jax demo --recipe demo` names the shipped file
    assert load_recipe(shipped, ["grpo_steps=7", "grpo_lr=2e-4"]) == Recipe(grpo_steps=7, grpo_lr=2e-4)
    assert load_recipe(quick=True) == Recipe(**QUICK)
    resolved = tmp_path / "recipe.toml"  # what a run writes beside its outputs
    resolved.write_text(dump_toml(Recipe(**QUICK)))
    assert load(Recipe, resolved) == Recipe(**QUICK)
    bad = tmp_path / "bad.toml"
    bad.write_text("grpo_step = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: grpo_step: unknown key; known: hidden, layers, "):
        load_recipe(bad)
    bad.write_text('votes = "five"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: votes: expected int, got 'five'"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match=r"--set sft_lr=fast: sft_lr: expected float, got 'fast'"):
        load_recipe(None, ["sft_lr=fast"])
