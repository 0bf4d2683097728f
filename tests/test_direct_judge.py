"""DirectJudge, the paper's no-reasoning baseline: every sample starts with the forced verdict suffix (no thinking
tokens before it), its soft score is the model's own digit probability right after the suffix, and the verdict
parses; `--direct` reaches the commands' configs and records."""

import json
import math

import numpy as np
import pytest

from fakes import SUFFIX, ChatCharTokenizer, FakeModel, shown
from rrm_jax.judge.judge import DIRECT_NEW_TOKENS, DirectJudge, Judge
from rrm_jax.sampler import Completion, SamplingConfig


class BudgetFakeGenerate:
    """A scripted sampler that honours the thinking budget the way the real one does: at most
    `max_think_tokens` thinking tokens, then the forced suffix, then the model's digit (the longer response wins)."""

    def __init__(self, tok):
        self.tok, self.configs = tok, []

    def __call__(self, model, prompts, cfg, progress=False):
        self.configs.append(cfg)
        out = []
        for pi, prompt in enumerate(prompts):
            first, second = shown(prompt)
            digit = "1" if len(first) > len(second) else "2"
            for s in range(cfg.n):
                think = self.tok.encode("Let me think about both answers at length. ")
                head = think if cfg.max_think_tokens is None else think[: cfg.max_think_tokens]
                ids = head + self.tok.encode(SUFFIX) + self.tok.encode(digit + "}")
                lp = np.full((len(ids), 2), math.log(0.5), np.float32)
                lp[len(head) + len(self.tok.encode(SUFFIX))] = (
                    [math.log(0.9), math.log(0.1)] if digit == "1" else [math.log(0.1), math.log(0.9)]
                )
                out.append(
                    Completion(
                        pi,
                        s,
                        ids,
                        self.tok.decode(ids),
                        np.zeros(len(ids), np.float32),
                        "budget",
                        len(ids),
                        lp,
                        len(head),
                    )
                )
        return out


def test_direct_judge_forces_the_suffix_at_once_and_parses():
    gen = BudgetFakeGenerate(ChatCharTokenizer())
    judge = DirectJudge(FakeModel(), sampling=SamplingConfig(max_new_tokens=4096, temperature=0.6), generate=gen)
    assert judge.direct and not Judge.direct
    pairs = [("q1", "a long answer", "short"), ("q2", "tiny", "a much longer one")]
    vs = judge.compare_many(pairs, votes=3, swap="both", seed=1)
    cfg = gen.configs[0]
    assert cfg.max_think_tokens == 0 and cfg.max_new_tokens == DIRECT_NEW_TOKENS and "}" in cfg.stop_strings
    assert [v.winner for v in vs] == [0, 1]  # parsed, in the caller's frame after the swaps
    for v in vs:
        assert v.samples_drawn == 6 and v.forced == 6 and v.invalid == 0
        assert all(t.startswith(SUFFIX) for t in v.reasonings)  # nothing before the suffix
        assert v.soft == pytest.approx(0.9 if v.winner == 0 else 0.1, abs=1e-6)
    # the same scripted model given a budget thinks first: the baseline differs only in the budget
    thinking = Judge(FakeModel(), sampling=SamplingConfig(max_think_tokens=20), generate=gen)
    v = thinking.compare("q", "x", "yy", votes=1, swap="none")
    assert v.winner == 1 and not v.reasonings[0].startswith(SUFFIX)


def test_direct_judge_on_a_tiny_random_model(mesh1):
    import rrm_jax
    from rrm_jax.core.tokenizers import char_tokenizer
    from rrm_jax.sampler import generate

    model = rrm_jax.init("tiny", seed=0, mesh=mesh1, tokenizer=char_tokenizer())
    comps = []

    def spy(*a, **k):
        comps.extend(generate(*a, **k))
        return comps[-len(a[1]) * a[2].n :]

    judge = DirectJudge(model, sampling=SamplingConfig(max_new_tokens=64, temperature=1.0), generate=spy)
    pairs = [("What is 2+2?", "4", "5"), ("Say hi.", "hello", "bye")]
    vs = judge.compare_many(pairs, votes=2, swap="none", seed=0)
    suffix = judge.suffix_ids
    assert len(comps) == 4
    for c in comps:
        assert c.forced_at == 0 and list(c.token_ids[: len(suffix)]) == suffix  # no reasoning tokens before it
        assert len(c.token_ids) <= len(suffix) + DIRECT_NEW_TOKENS
    # the soft score is the model's P("1") / (P("1") + P("2")) right after prompt + suffix (a plain forward pass)
    d1, d2 = judge.digit_ids
    for (q, a, b), v in zip(pairs, vs):
        ids = model.tokenizer.encode(judge.render(q, a, b), add_special_tokens=False) + suffix
        logits = np.asarray(model.logits(np.asarray([ids])), np.float64)[0, -1]
        assert v.soft == pytest.approx(1 / (1 + math.exp(logits[d2] - logits[d1])), abs=1e-4)
        assert v.forced == 2 and v.samples_drawn == 2


def test_direct_flag_reaches_the_commands(tmp_path):
    from rrm_jax.evaluation.config import EvalConfig, RankConfig, build_config, think_budgets, validate
    from rrm_jax.evaluation.run import Setting

    cfg = build_config(EvalConfig, ["--direct", "--max-think-tokens", "512,none"], "t", "t")
    validate(cfg)
    assert cfg.direct and think_budgets(cfg) == (0,)
    assert Setting(2, 0).tag == "v2-direct" and Setting(2, None).tag == "v2-tnone"
    rank = build_config(RankConfig, ["--direct", "false"], "t", "t")
    assert not rank.direct and think_budgets(rank) == (None,)
    from rrm_jax.evaluation.config import BonConfig

    bon = build_config(BonConfig, ["--direct", "d.jsonl", "--plots"], "t", "t", positional="data")
    assert bon.direct and bon.plots and bon.data == "d.jsonl"  # a bare flag does not eat the next word
    # rank records its judge (direct or not) in the run meta, so the two never resume into each other
    from rrm_jax.evaluation import cli

    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": "q", "candidates": ["a", "b"]}) + "\n")

    class Stub:
        def rank(self, query, cands, **kw):
            from rrm_jax.judge.tournament import Ranking

            return Ranking(
                order=[0, 1], ratings=np.zeros(2), wins=np.zeros((2, 2)), comparisons=1, tokens=0, strategy="knockout"
            )

    out = tmp_path / "r.jsonl"
    assert (
        cli.rank_main(["--queries", str(queries), "--out", str(out), "--direct", "--progress", "false"], judge=Stub())
        == 0
    )
    meta = json.loads((tmp_path / "r.jsonl.meta.json").read_text())
    assert meta["direct"] is True and meta["max_think_tokens"] == 0
    assert cli.rank_main(["--queries", str(queries), "--out", str(out), "--progress", "false"], judge=Stub()) == 2


def test_eval_runs_direct_beside_thinking_in_one_table(tmp_path):
    from rrm_jax.evaluation.cli import eval_main
    from test_evaluate import OracleJudge, synthetic

    data = synthetic(6)
    src = tmp_path / "p.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {"id": r.id, "query": r.query, "response_a": r.response_a, "response_b": r.response_b, "label": r.label}
            )
            + "\n"
            for r in data
        )
    )
    out = tmp_path / "out"
    budgets = []
    args = [
        "--dataset",
        "jsonl",
        "--data",
        str(src),
        "--out",
        str(out),
        "--progress",
        "false",
        "--data-dir",
        str(tmp_path / "tfds"),
    ]
    assert (
        eval_main(
            [*args, "--max-think-tokens", "0,none"],
            judge_factory=lambda b: budgets.append(b) or OracleJudge(data, budget=b),
        )
        == 0
    )
    assert budgets == [0, None]
    summaries = json.loads((out / "summary.json").read_text())
    assert [(s["setting"], s["direct"]) for s in summaries] == [("v1-direct", True), ("v1-tnone", False)]
    assert "| v1-direct |" in (out / "summary.md").read_text()
    budgets.clear()
    assert (
        eval_main(
            [*args, "--direct", "--out", str(tmp_path / "o2")],
            judge_factory=lambda b: budgets.append(b) or OracleJudge(data, budget=b),
        )
        == 0
    )
    assert budgets == [0] and (tmp_path / "o2" / "records-v1-direct.jsonl").exists()


def test_direct_score_is_a_pure_function_equal_to_the_direct_judges_soft_score(mesh1):
    """Issue 23.4: DirectScore(params, ids, mask) under jit, vmap and a data-parallel mesh equals
    DirectJudge(...).compare(...).soft (the sampler's digit probabilities after the forced suffix)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    import rrm_jax
    from rrm_jax.core.tokenizers import byte_tokenizer
    from rrm_jax.judge import DirectScore

    model = rrm_jax.init("tiny", seed=3, mesh=mesh1, dtype=jnp.float32, tokenizer=byte_tokenizer())
    judge = DirectJudge(model, prompt="demo", sampling=SamplingConfig(max_new_tokens=8, temperature=0.6))
    pairs = [("2+2?", "4", "5"), ("name a colour", "a long answer about blue", "red"), ("x", "y", "z")]
    want = [judge.compare(*p, swap="none").soft for p in pairs]
    score = DirectScore.from_judge(judge)
    ids, mask = DirectScore.encode(judge, pairs)
    got = jax.jit(score)(model.state, ids, mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
    one = jax.vmap(score, in_axes=(None, 0, 0))(model.state, ids[:, None], mask[:, None])[:, 0]
    np.testing.assert_allclose(np.asarray(one), want, atol=2e-5)
    wide = DirectScore.encode(judge, pairs, length=ids.shape[1] + 5)  # padding changes nothing
    np.testing.assert_allclose(np.asarray(jax.jit(score)(model.state, *wide)), want, atol=2e-5)
    from rrm_jax.core.sharding import MESH_AXES, make_mesh

    mesh = make_mesh((2, 1, 1), devices=jax.devices()[:2])
    sharded = rrm_jax.init("tiny", seed=3, mesh=mesh, dtype=jnp.float32, tokenizer=byte_tokenizer())
    rows = NamedSharding(mesh, PartitionSpec(MESH_AXES[0]))
    four = [*pairs, pairs[0]]
    ids4, mask4 = (jax.device_put(x, rows) for x in DirectScore.encode(judge, four))
    out = jax.jit(DirectScore.from_judge(judge))(sharded.state, ids4, mask4)
    np.testing.assert_allclose(np.asarray(out), [*want, want[0]], atol=2e-5)
