"""Policy GRPO on a frozen judge's rewards, end to end on train/policy-tiny.toml: judge_knockout and judge_elo runs
(judge metrics, checkpoints, a killed run resuming bit for bit), judge_reference's +-1 rewards, the held-back
answer's accuracy metric (never a reward), the {query} pipeline's bad input, config errors, and the shipped large
recipe train/policy-7b-rrm32b.toml (loaded and sized, never built)."""

import json
import math
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

import rrm_jax
from fakes import FakeCompletion
from rrm_jax.core.errors import ConfigError
from rrm_jax.training.config import load_config, preflight
from runs import killed_at, records

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "policy-tiny.toml"
LARGE = ROOT / "train" / "policy-7b-rrm32b.toml"
TIMING = ("judge_seconds", "judge_share")  # wall-clock metrics: never equal across two runs


def _model(mesh):
    from rrm_jax.core.tokenizers import byte_tokenizer

    return rrm_jax.init("tiny", seed=0, mesh=mesh, tokenizer=byte_tokenizer())


def _cfg(run_dir, *overrides):
    return load_config(TINY, [f"run_dir='{run_dir}'", "tensorboard=false", *overrides])


def _raw(run_dir):
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _records(run_dir):
    return records(run_dir, skip=TIMING)


def _check_judge_metrics(rows, cfg, per_group):
    """Every step logs the judge's cost; with G distinct responses per group the comparisons are closed-form."""
    g = cfg.grpo
    for r in rows:
        assert r["judge_tokens"] > 0 and 0 < r["judge_share"] < 1
        if r["judge_distinct"] == g.group_size:  # random 16-token replies: always distinct in practice
            assert r["judge_comparisons"] == g.prompts_per_step * per_group(g.group_size)
    assert any(r["judge_distinct"] == g.group_size for r in rows)


# ------------------------------------------------------------------------------------------ full runs
@pytest.mark.slow
@pytest.mark.parametrize(
    "reward,matches",
    [
        ("judge_knockout", lambda g: g - 1),  # a knockout: G - 1 per group
        ("judge_elo", lambda g: g * (g - 1) // 2),
    ],
)  # round-robin: every pair
def test_run_checkpoints_and_resumes_bit_for_bit(tmp_path, mesh1, reward, matches):
    from rrm_jax.training.loop import train

    over = (f"grpo.reward='{reward}'", "steps=3", "save_every=2")
    full = train(_cfg(tmp_path / "a", *over), model=_model(mesh1), progress=False)
    assert full["resumed_from"] == 0

    killed_at(3, lambda **kw: train(_cfg(tmp_path / "b", *over), model=_model(mesh1), progress=False, **kw))
    assert len(_records(tmp_path / "b")) == 3  # step 3 was logged, but its checkpoint was never written
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    resumed = train(_cfg(tmp_path / "b", *over), model=_model(mesh1), progress=False)
    assert resumed["resumed_from"] == 2

    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3]
    assert a == b  # every metric of every step (judge tokens and comparisons included), bit for bit
    wa = (tmp_path / "a" / "hf" / "model.safetensors").read_bytes()
    assert wa == (tmp_path / "b" / "hf" / "model.safetensors").read_bytes()
    # the rewards (a match without a vote majority goes to the soft score) separate the group, so the weights
    # really moved and the comparison above is not vacuous
    assert any(r["reward_std"] > 0 and r["grad_norm"] > 0 for r in a)
    assert wa != _export(_model(mesh1), tmp_path / "init")
    _check_judge_metrics(_raw(tmp_path / "a"), _cfg(tmp_path / "a", *over), matches)
    ckpts = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == ["2", "3"]


def _export(model, path):
    from rrm_jax.core.api import save_hf

    return (Path(save_hf(model, path)) / "model.safetensors").read_bytes()


def test_elo_run_logs_the_judge_and_checkpoints(tmp_path, mesh1):
    from rrm_jax.training.loop import train
    from rrm_jax.training.rl.judge_rewards import from_config

    cfg = _cfg(tmp_path / "e", "grpo.reward='judge_elo'", "steps=2", "save_every=1", "export_hf=false")
    model = _model(mesh1)
    rec = _Recorder(from_config(cfg, model))
    summary = train(cfg, model=model, reward_fn=rec, progress=False)
    rows = _raw(tmp_path / "e")
    assert [r["step"] for r in rows] == [1, 2] and summary["steps"] == 2
    _check_judge_metrics(rows, cfg, lambda g: g * (g - 1) // 2)  # a round-robin: every pair once
    g = cfg.grpo.group_size
    for row, r in zip(rows, rec.rewards):
        # Bradley-Terry ratings standardised per group: mean 0 and std 1. A random judge's verdict digit rarely
        # parses; its soft score then decides the match, so the ratings still spread and the policy still moves
        for grp in r.reshape(-1, g):
            assert abs(grp.mean()) < 1e-5 and abs(grp.std() - 1) < 1e-4
        assert row["grad_norm"] > 0
        assert row["reward_mean"] == pytest.approx(float(r.mean()), abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "e" / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]


class _Recorder:
    """A reward that delegates to another and keeps what it was given and what it returned."""

    def __init__(self, inner):
        self.inner, self.batches, self.rewards = inner, [], []

    @property
    def last_stats(self):
        return getattr(self.inner, "last_stats", {})

    def __call__(self, prompts, completions, batch):
        out = np.asarray(self.inner(prompts, completions, batch))
        self.batches.append(batch)
        self.rewards.append(out)
        return out


def test_judge_reference_rewards_are_plus_or_minus_one(tmp_path, mesh1):
    from rrm_jax.training.loop import train
    from rrm_jax.training.rl.judge_rewards import from_config

    cfg = _cfg(tmp_path / "r", "grpo.reward='judge_reference'", "steps=2", "export_hf=false")
    model = _model(mesh1)
    rec = _Recorder(from_config(cfg, model))
    train(cfg, model=model, reward_fn=rec, progress=False)
    assert len(rec.rewards) == 2
    for batch, r in zip(rec.batches, rec.rewards):
        assert set(np.unique(r)) <= {-1.0, 1.0}
        assert "answer" not in batch
        # each response met its query's reference: the sum of the synthetic "a+b=?"
        for q, ref in zip(batch["query"], batch["reference"]):
            a, b = map(int, re.fullmatch(r"(\d)\+(\d)=\?", q).groups())
            assert ref == str(a + b)
    rows = _records(tmp_path / "r")
    for row, r in zip(rows, rec.rewards):  # the logged moments are those of a +-1 sample
        assert row["reward_mean"] == pytest.approx(float(r.mean()), abs=1e-6)
        assert row["reward_mean"] ** 2 + row["reward_std"] ** 2 == pytest.approx(1.0, abs=1e-5)
        assert row["judge_comparisons"] == cfg.grpo.prompts_per_step * row["judge_distinct"]


# ------------------------------------------------------------------------------------------ answer accuracy
TEXTS = {  # scripted responses per query, and whether each is right (worked out by hand)
    "1+2=?": [("<think>maybe 4</think> so \\boxed{3}", 1), ("\\boxed{ 3 }", 1), ("\\boxed{4}", 0), ("no answer", 0)],
    "2+2=?": [("\\boxed{\\frac{8}{2}}", 1), ("\\boxed{5}", 0), ("the answer is 4", 0), ("\\boxed{22}", 0)],
}


def test_answer_accuracy_is_a_metric_the_reward_never_sees(mesh1):
    from rrm_jax.training.trainer import Trainer

    model = _model(mesh1)
    tok = model.tokenizer
    cfg = _cfg("unused", "judge.extract='math'", "grpo.prompts_per_step=2", "grpo.group_size=4")
    by_prompt = {}

    def generate_fn(policy, prompts, sampling):
        out = []
        for p in prompts:
            query = by_prompt[tuple(p)]
            for text, _ in TEXTS[query][: sampling.n]:
                ids = tok.encode(text, add_special_tokens=False)
                out.append(FakeCompletion(ids, text, np.full(len(ids), -1.0, np.float32), "stop", len(ids)))
        return out

    seen = []

    def reward_fn(prompts, completions, batch):
        seen.append(batch)
        return np.arange(len(completions), dtype=np.float32)  # any spread: the update runs on real advantages

    tr = Trainer(model, cfg, reward_fn, generate_fn=generate_fn)
    data = [{"query": "1+2=?", "answer": "3"}, {"query": "2+2=?", "answer": "4"}]
    for ex in tr.prepare(data):
        by_prompt[tuple(ex["prompt_ids"].tolist())] = ex["query"]
    metrics = tr.grpo_step(data)
    right = [ok for q in ("1+2=?", "2+2=?") for _, ok in TEXTS[q]]
    assert metrics["answer_accuracy"] == pytest.approx(sum(right) / len(right))  # 3/8
    (batch,) = seen
    assert "answer" not in batch and batch["query"] == [q for q in ("1+2=?", "2+2=?") for _ in range(4)]
    assert not any(v == ["3"] * 4 + ["4"] * 4 for v in batch.values() if isinstance(v, list))

    no_extract = Trainer(
        model, _cfg("unused", "grpo.prompts_per_step=2", "grpo.group_size=4"), reward_fn, generate_fn=generate_fn
    )
    assert "answer_accuracy" not in no_extract.grpo_step(data)  # no extractor: nothing to score against


# ------------------------------------------------------------------------------------------ bad input
LINES = [
    json.dumps({"query": "1+1=?", "answer": "2", "reference": "2"}),
    json.dumps({"answer": "3"}),  # 2: no query
    json.dumps({"query": "   ", "reference": "1"}),  # 3: empty query
    "{not json",  # 4
    json.dumps({"query": "2+2=?"}),  # 5: no reference (only judge_reference needs one)
    json.dumps({"query": "x", "answer": [1]}),  # 6: answer of the wrong type
    json.dumps({"query": "3+3=?", "reference": "6"}),
]
MISSING_QUERY = "field 'query' is missing, empty or not a string"
MISSING_REF = "field 'reference' is missing, empty or not a string"


def test_bad_queries_are_dropped_counted_and_located_in_data_report(tmp_path, mesh1):
    from rrm_jax.training.loop import train

    path = tmp_path / "queries.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    model = _model(mesh1)
    zero = lambda prompts, completions, batch: np.zeros(len(completions), np.float32)

    def report(reward, run):
        cfg = _cfg(
            tmp_path / run,
            f"grpo.reward='{reward}'",
            "data.synthetic=0",
            f"data.path='{path}'",
            "steps=0",
            "export_hf=false",
        )
        train(cfg, model=model, reward_fn=zero, progress=False)
        return json.loads((tmp_path / run / "data_report.json").read_text())

    rep = report("judge_elo", "elo")
    assert rep["read"] == 7 and rep["kept"] == 3
    assert rep["dropped"] == {MISSING_QUERY: 2, "invalid JSON": 1, "field 'answer' is not a string or number": 1}
    for line in (2, 3, 4, 6):
        assert any(p.startswith(f"{path}:{line}: ") for p in rep["problems"])

    rep = report("judge_reference", "ref")
    assert rep["read"] == 7 and rep["kept"] == 2  # lines 1 and 7
    # a reference is checked before the answer's type: line 6 now lacks the reference first
    assert rep["dropped"] == {MISSING_QUERY: 2, MISSING_REF: 2, "invalid JSON": 1}
    assert f"{path}:5: {MISSING_REF}" in rep["problems"]

    path.write_text(LINES[4] + "\n")  # nothing usable: one error naming the missing field
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: no usable queries.*reference"):
        report("judge_reference", "none")


# ------------------------------------------------------------------------------------------ config errors
def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"judge\.model=''.*judge_elo"):
        load_config(TINY, ["grpo.reward='judge_elo'", "judge.model=''"])
    assert load_config(TINY, ["grpo.reward='verdict'", "judge.model=''"]).judge.model == ""  # not a policy run
    with pytest.raises(ConfigError, match=r"judge\.extract=''.*show = 'answer'"):
        load_config(TINY, ["judge.show='answer'"])
    assert load_config(TINY, ["judge.show='answer'", "judge.extract='math'"]).judge.show == "answer"
    with pytest.raises(ConfigError, match=r"judge\.show='final'"):
        load_config(TINY, ["judge.show='final'"])


# ------------------------------------------------------------------------------------------ the large recipe
LARGE_DEVICES = 32  # TPU v5p-64: 32 chips (a chip's two TensorCores are one JAX device)
HBM_PER_DEVICE = 95e9


def _params(preset: str) -> int:
    """Parameter count of a Qwen2 preset, from its shape numbers (independent of the model code)."""
    m = tomllib.loads((ROOT / "models" / f"{preset}.toml").read_text())["model"]
    h, hd, inter = m["hidden_size"], m["head_dim"], m["intermediate_size"]
    q, kv = m["num_heads"] * hd, m["num_kv_heads"] * hd
    attn = h * q + 2 * h * kv + q * h + (q + 2 * kv) * m["qkv_bias"]
    layer = attn + 3 * h * inter + 2 * h
    return m["num_layers"] * layer + m["vocab_size"] * h * (1 if m["tie_word_embeddings"] else 2) + h


def test_large_recipe_loads_marks_every_value_and_fits_its_slice(tmp_path, monkeypatch):
    import dataclasses

    from rrm_jax.core import shipped
    from rrm_jax.core.configs import write_toml

    cfg = load_config(LARGE)
    assert cfg.policy and cfg.grpo.reward in ("judge_knockout", "judge_elo")
    assert cfg.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" and cfg.judge.model == "Reward-Reasoning/RRM-32B"
    assert cfg.judge.prompt == "rrm-v1" and cfg.judge.sampling.temperature == 0.6  # the released RRMs' contract
    assert "v5p-64" in LARGE.read_text().split("\n\n", 1)[0]  # the header names the slice this test sizes for
    assert shipped.find("policy-7b-rrm32b", "train") == LARGE  # `rrm-jax train policy-7b-rrm32b` from anywhere
    assert load_config(write_toml(cfg, tmp_path / "saved.toml")) == cfg  # what a run writes beside itself

    # every value says where it comes from
    for n, line in enumerate(LARGE.read_text().splitlines(), 1):
        if re.match(r"\s*[a-z_]+\s*=", line):
            assert "[paper]" in line or "[ours]" in line, f"{LARGE.name}:{n}: no [paper]/[ours] mark: {line}"

    # the mesh fits the named slice (and not, say, 30 devices); the rows split evenly over micro-batches and shards
    runnable = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, synthetic=1))
    preflight(runnable, LARGE_DEVICES)
    with pytest.raises(ConfigError, match="mesh"):
        preflight(runnable, 30)
    # its remat = "offload" keeps the saved layer inputs in host memory: devices without that space are told so
    import jax

    class NoHostMemory:
        platform = "gpu"

        def addressable_memories(self):
            return [type("Memory", (), {"kind": "device"})()]

    assert cfg.remat == "offload"
    monkeypatch.setattr(jax, "devices", lambda *a: [NoHostMemory()])
    with pytest.raises(ConfigError, match=r'remat="offload": gpu devices here have no host memory.*remat="full"'):
        preflight(runnable, LARGE_DEVICES)
    monkeypatch.undo()
    mesh = [LARGE_DEVICES // math.prod(s for s in cfg.mesh if s != -1) if s == -1 else s for s in cfg.mesh]
    assert math.prod(mesh) == LARGE_DEVICES
    rows = cfg.grpo.prompts_per_step * cfg.grpo.group_size
    assert rows % (cfg.optim.micro_batches * mesh[0] * mesh[1]) == 0
    # tensor parallelism divides both models' heads and KV heads (else that axis would be replicated)
    for preset in ("deepseek-r1-distill-qwen-7b", "rrm-32b"):
        m = tomllib.loads((ROOT / "models" / f"{preset}.toml").read_text())["model"]
        assert m["num_heads"] % mesh[2] == 0 and m["num_kv_heads"] % mesh[2] == 0
    # weights: the policy's fp32 master + AdamW moments (16 B/param) and the judge in bf16 take under a third of
    # the slice's HBM, leaving the rest to KV caches and activations
    weights = 16 * _params("deepseek-r1-distill-qwen-7b") + 2 * _params("rrm-32b")
    assert 7.0e9 < _params("deepseek-r1-distill-qwen-7b") < 8.0e9 and 32e9 < _params("rrm-32b") < 33.5e9
    assert weights < LARGE_DEVICES * HBM_PER_DEVICE / 3


def test_the_rule_reward_and_the_overlong_penalty_add_to_the_judge_reward(mesh1):
    """Issue 25.2: grpo.rule_weight adds w x (+1 / -1: the response's answer against the data's reference) to the
    judge's reward, and grpo.overlong_buffer DAPO's linear penalty over the last tokens before the cap; each
    term's mean is logged. Closed form on scripted rollouts."""
    from rrm_jax.training.rl.rewards import overlong_penalty
    from rrm_jax.training.trainer import Trainer

    model = _model(mesh1)
    tok = model.tokenizer
    cap = 12
    extra = ["judge.extract='math'", "grpo.prompts_per_step=2", "grpo.group_size=4", f"sampling.max_new_tokens={cap}"]
    cfg = _cfg("unused", *extra, "grpo.rule_weight=0.5", "grpo.overlong_buffer=4", "grpo.overlong_factor=2.0")
    by_prompt, lengths = {}, []

    def generate_fn(policy, prompts, sampling):
        out = []
        for p in prompts:
            for text, _ in TEXTS[by_prompt[tuple(p)]][: sampling.n]:
                ids = tok.encode(text, add_special_tokens=False)[:cap]
                lengths.append(len(ids))
                out.append(FakeCompletion(ids, text, np.full(len(ids), -1.0, np.float32), "stop", len(ids)))
        return out

    judged = np.linspace(-1, 1, 8).astype(np.float32)
    tr = Trainer(model, cfg, lambda prompts, comps, batch: judged, generate_fn=generate_fn)
    data = [{"query": "1+2=?", "reference": "3"}, {"query": "2+2=?", "reference": "4"}]
    for ex in tr.prepare(data):
        by_prompt[tuple(ex["prompt_ids"].tolist())] = ex["query"]
    inner, seen = tr.reward_fn, {}

    class Spy:  # keeps the total the rollout used, and passes the terms' stats on
        last_stats = property(lambda self: inner.last_stats)

        def __call__(self, *args):
            seen["r"] = inner(*args)
            return seen["r"]

    tr.reward_fn = Spy()
    metrics = tr.grpo_step(data)
    right = np.array([ok for q in ("1+2=?", "2+2=?") for _, ok in TEXTS[q]], np.float32)
    rule = np.where(right, 1.0, -1.0)
    long = np.clip((cap - 4 - np.array(lengths, np.float32)) / 4, -1, 0)
    np.testing.assert_allclose(seen["r"], judged + 0.5 * rule + 2.0 * long, rtol=1e-6)
    assert metrics["reward_rule"] == pytest.approx(rule.mean()) and metrics["reward_overlong"] == pytest.approx(
        long.mean()
    )
    np.testing.assert_allclose(overlong_penalty([0, 8, 9, 10, 12, 20], 12, 4), [0, 0, -0.25, -0.5, -1, -1])
    with pytest.raises(ConfigError, match="grpo.rule_weight=0.5: needs a policy run"):
        load_config(None, ["grpo.rule_weight=0.5"])
