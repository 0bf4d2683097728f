"""The train step (accumulation, sharding, NaN handling), checkpoint resume, configs and bad input."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rrm_jax
from rrm_jax.core.configs import dump_toml
from rrm_jax.training.checkpoint import Checkpointer
from rrm_jax.training.config import GRPOConfig, OptimConfig, TrainConfig, load_config
from rrm_jax.training.objectives import GRPO
from rrm_jax.training.rl.loss import LossConfig
from rrm_jax.training.step import init_state, make_optimizer, make_train_step, place_batch
from runs import killed_at, records

OPT = OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=0.01, clip_norm=1.0)
LOSS = LossConfig(eps_low=0.2, eps_high=0.28, beta=0.05, aggregation="seq-mean-token-mean", logprob_chunk=8)


def _batch(b=8, t=32, seed=0, vocab=512):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
    lens = rng.integers(12, t + 1, b)
    lens[-1] = 0  # a padding row
    mask = np.arange(t)[None] < lens[:, None]
    start = rng.integers(2, 10, b)
    loss_mask = mask & (np.arange(t)[None] >= start[:, None])
    return dict(
        tokens=tok[:, :-1] * mask,
        targets=tok[:, 1:] * mask,
        mask=mask,
        positions=np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32),
        loss_mask=loss_mask,
        old_logp=rng.normal(-6.2, 0.2, (b, t)).astype(np.float32) * loss_mask,
        ref_logp=rng.normal(-6.2, 0.2, (b, t)).astype(np.float32) * loss_mask,
        advantages=rng.normal(0, 1, b).astype(np.float32),
    )


def _run(model, batch, micro, steps=1):
    step = make_train_step(model, OPT, 10, GRPO(LOSS), micro_batches=micro)
    tx, _ = make_optimizer(OPT, 10)
    state = init_state(model, tx)
    mets = []
    for _ in range(steps):
        state, m = step(state, place_batch(model, batch, GRPO(LOSS).keys))
        mets.append({k: float(v) for k, v in m.items()})
    return state, mets


def _assert_close_trees(a, b, rtol, atol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def tiny(mesh1):
    return rrm_jax.init("tiny", seed=0, mesh=mesh1)


# full: the layers' backward adds into the accumulator; offload: the same, its saved layer inputs in host memory
@pytest.mark.parametrize("remat", ["none", "full", "offload"])
def test_gradient_accumulation_equals_full_batch(tiny, remat):
    batch = _batch()
    s1, m1 = _run(tiny, batch, micro=1)
    s4, m4 = _run(
        tiny if remat == "none" else rrm_jax.init("tiny", seed=0, mesh=tiny.mesh, remat=remat), batch, micro=4
    )
    for k in ("loss", "grad_norm", "kl", "clip_frac", "entropy", "pg_loss"):
        np.testing.assert_allclose(m4[0][k], m1[0][k], rtol=2e-5, err_msg=k)
    assert m1[0]["grad_norm"] > 0 and m1[0]["skipped"] == 0
    # Adam's first step is ~lr * sign(g): tiny gradient entries amplify summation-order noise, hence atol
    _assert_close_trees(s4.params, s1.params, rtol=1e-5, atol=1e-5)
    # the update moved the weights (so the comparison is not vacuous)
    assert not np.allclose(np.asarray(s1.params["embed"][...]), np.asarray(tiny.state["embed"][...]))


# full remat with micro-batches: the layers' backward adds into the accumulator, with split residuals (core.grad_sink);
# offload with one: the same stack without an accumulator, its saved inputs copied to host memory and back
@pytest.mark.parametrize("remat, micro", [("none", 1), ("full", 2), ("offload", 1)])
def test_sharded_step_matches_single_device(tiny, remat, micro):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake CPU) devices")
    from rrm_jax.core.sharding import make_mesh

    mesh8 = make_mesh((2, 2, 2))
    m8 = rrm_jax.init("tiny", seed=0, mesh=mesh8, remat=remat)
    m8 = m8.with_state(jax.device_put(tiny.state, m8.state_shardings))
    assert m8.batch_multiple() == 4
    batch = _batch()
    s1, m1 = _run(tiny, batch, micro=1, steps=2)
    s8, mm = _run(m8, batch, micro=micro, steps=2)
    assert len(s8.params["layers"]["q_proj"][...].sharding.device_set) == 8
    # optimizer moments follow the params' sharding
    mu = jax.tree_util.tree_leaves(s8.opt_state)
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in mu)
    for a, b in zip(m1, mm):
        for k in ("loss", "grad_norm", "kl", "entropy"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, err_msg=k)
    # Adam amplifies summation-order noise in tiny gradient entries; a sharding bug moves weights by ~lr (1e-3)
    _assert_close_trees(s8.params, s1.params, rtol=1e-5, atol=3e-5)


def test_nan_loss_skips_update_and_never_reaches_a_checkpoint(tiny, tmp_path):
    step = make_train_step(tiny, OPT, 10, GRPO(LOSS))
    tx, _ = make_optimizer(OPT, 10)
    state = init_state(tiny, tx)
    before = jax.device_get(state.params)
    bad = _batch()
    bad["advantages"][0] = np.nan
    state, m = step(state, place_batch(tiny, bad, GRPO(LOSS).keys))
    assert np.isnan(m["loss"]) and int(m["skipped"]) == 1
    assert int(state.step) == 1 and int(state.skipped) == 1
    _assert_close_trees(state.params, before, rtol=0, atol=0)  # bit-identical: nothing applied
    state, m = step(state, place_batch(tiny, _batch(), GRPO(LOSS).keys))
    assert int(m["skipped"]) == 0 and int(state.skipped) == 1 and np.isfinite(float(m["loss"]))

    ck = Checkpointer(tmp_path / "ck", async_=False)
    assert ck.save(2, state, {"iteration": 2})
    poisoned = state.replace(params=jax.tree_util.tree_map(lambda x: x * jnp.nan, state.params))
    assert not ck.save(3, poisoned, {"iteration": 3})
    assert ck.latest_step() == 2
    restored, meta = ck.restore(2, state)
    assert meta["iteration"] == 2
    _assert_close_trees(restored.params, state.params, rtol=0, atol=0)
    ck.close()


def test_sft_step_metrics_match_reference_and_loss_falls(tiny):
    from rrm_jax.training.trainer import Trainer

    cfg = TrainConfig(
        mode="sft", steps=6, batch_size=3, optim=OptimConfig(lr=3e-3, micro_batches=1), grpo=GRPOConfig(logprob_chunk=8)
    )
    tr = Trainer(tiny, cfg, reward_fn=lambda *a: None)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 512, n).tolist() for n in (5, 9, 3)]
    comps = [rng.integers(0, 512, n).tolist() for n in (7, 4, 10)]
    # independent reference: -mean log_softmax of the completion tokens from the plain forward
    want = []
    for p, c in zip(prompts, comps):
        seq = np.array(p + c)
        lsm = np.asarray(jax.nn.log_softmax(tiny.logits(seq[None, :-1])[0]), np.float64)
        want += [-lsm[len(p) - 1 + j, c[j]] for j in range(len(c))]
    losses = [tr.sft_step(prompts, comps)["nll"] for _ in range(6)]
    np.testing.assert_allclose(losses[0], np.mean(want), rtol=1e-5)
    assert losses[-1] < losses[0] - 0.5


# ------------------------------------------------------------------------------------------ resume
def parity_reward(prompts, completions, batch):
    """A reward with signal on a random model: +1 when most sampled tokens are even."""
    return np.array([1.0 if np.mean(np.asarray(c.token_ids) % 2 == 0) > 0.5 else -1.0 for c in completions], np.float32)


def _cfg(run_dir, steps):
    return load_config(
        Path(__file__).parents[1] / "train" / "tiny.toml",
        [
            f"run_dir='{run_dir}'",
            f"steps={steps}",
            "save_every=2",
            "mesh=[1,1,1]",
            "export_hf=true",
            "sampling.max_new_tokens=12",
            "grpo.seq_bucket=128",
            "optim.lr=3e-3",
            "data.synthetic=24",
        ],
    )


@pytest.mark.slow(40)
def test_kill_and_resume_reproduces_metrics_bit_for_bit(tmp_path, mesh1):
    from rrm_jax.training.cli import plot_cli
    from rrm_jax.training.loop import train

    def model():
        from rrm_jax.core.tokenizers import byte_tokenizer

        return rrm_jax.init("tiny", seed=0, mesh=mesh1, tokenizer=byte_tokenizer())

    train(_cfg(tmp_path / "a", 4), model=model(), reward_fn=parity_reward, progress=False)

    killed_at(
        3, lambda **kw: train(_cfg(tmp_path / "b", 4), model=model(), reward_fn=parity_reward, progress=False, **kw)
    )
    assert len(records(tmp_path / "b")) == 3  # step 3 was logged, but the last checkpoint is step 2
    resumed = train(_cfg(tmp_path / "b", 4), model=model(), reward_fn=parity_reward, progress=False)
    assert resumed["resumed_from"] == 2

    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a == b  # every metric of every step, bit for bit
    if importlib.util.find_spec("tensorboard"):  # TensorBoard shows the same curve, the killed run's step 3 dropped
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "b" / "tb"))
        acc.Reload()
        assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(r["step"], np.float32(r["loss"])) for r in b]
    assert any(r["grad_norm"] > 0 for r in a) and len({r["loss"] for r in a}) > 1  # the weights did move
    # before the first inner update the trainer's log-probs reproduce the sampler's (old policy == rollout policy)
    assert all(r["old_policy_kl"] < 1e-6 for r in a) and a[-1]["approx_kl_old"] > 1e-6
    wa = (tmp_path / "a" / "hf" / "model.safetensors").read_bytes()
    assert wa == (tmp_path / "b" / "hf" / "model.safetensors").read_bytes()
    reloaded = rrm_jax.load(tmp_path / "a" / "hf", mesh=mesh1, dtype=jnp.float32, tokenizer=None)
    assert reloaded.config.hidden_size == 64 and reloaded.config.num_layers == 2

    assert plot_cli([str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "curves.png").stat().st_size > 1000
    saved = load_config(tmp_path / "a" / "config.toml")
    assert saved == _cfg(tmp_path / "a", 4)


# ------------------------------------------------------------------------------------------ config & data
def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(
        None, ["steps=7", "optim.lr=2e-6", "grpo.aggregation='token-mean'", "mesh=[2,-1,1]", "data.path=x.jsonl"]
    )
    assert cfg.steps == 7 and cfg.optim.lr == 2e-6 and cfg.grpo.aggregation == "token-mean"
    assert cfg.mesh == (2, -1, 1) and cfg.data.path == "x.jsonl" and isinstance(cfg.optim, OptimConfig)
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0 and isinstance(
        load_config(None, ["optim.lr=1"]).optim.lr, float
    )
    p = tmp_path / "r.toml"
    p.write_text(dump_toml(cfg))
    assert load_config(p) == cfg
    with pytest.raises(ValueError, match="optim.lrr: unknown key; known: lr, warmup_steps"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="steps: expected int"):
        load_config(None, ["steps='many'"])
    with pytest.raises(ValueError, match="mode must be"):
        TrainConfig(mode="ppo")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    with pytest.raises(ValueError, match="bad.toml"):
        load_config(bad)
    assert GRPOConfig().group_size == 8


def test_bad_pairs_are_dropped_with_counts_and_locations(tmp_path):
    from rrm_jax.core.tokenizers import byte_tokenizer
    from rrm_jax.judge.prompt import make_render
    from rrm_jax.training.data import PairPipeline, read_training_pairs

    tok = byte_tokenizer()
    render = make_render(tok, "short")
    lines = [
        json.dumps({"query": "1+1=?", "chosen": "2", "rejected": "3"}),
        json.dumps({"query": "2+2=?", "chosen": "4", "rejected": "4"}),  # chosen == rejected
        json.dumps({"query": "", "chosen": "4", "rejected": "5"}),  # empty field
        json.dumps({"query": "x", "chosen": "4"}),  # missing field
        "{not json",
        json.dumps({"query": "long " * 100, "chosen": "1", "rejected": "2"}),  # over-long
        json.dumps({"query": "3+3=?", "chosen": "6", "rejected": "7"}),
        json.dumps(
            {
                "chosen": [
                    {"role": "user", "content": "4+4=?"},
                    {"role": "assistant", "content": "8"},
                ],  # Skywork style
                "rejected": [{"role": "user", "content": "4+4=?"}, {"role": "assistant", "content": "9"}],
            }
        ),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    pairs, rep = read_training_pairs(path, tok, render, max_prompt_tokens=160)
    assert [p["query"] for p in pairs] == ["1+1=?", "3+3=?", "4+4=?"] and pairs[2]["rejected"] == "9"
    assert rep["read"] == 8 and rep["kept"] == 3
    assert rep["dropped"] == {
        "chosen == rejected": 1,
        "field 'query' is empty": 1,
        "field 'rejected' is missing or not a string": 1,
        "invalid JSON": 1,
        "prompt longer than max_prompt_tokens=160": 1,
    }
    assert any(f"{path}:2:" in p for p in rep["problems"]) and any(f"{path}:5:" in p for p in rep["problems"])
    # every kept prompt really fits
    cfg = load_config(None, ["grpo.prompts_per_step=3", "data.max_prompt_tokens=160"])
    pipe = PairPipeline(path, render, tok, cfg)
    first = pipe.next()
    assert len(first) == 3 and all(len(e["prompt_ids"]) <= 160 for e in first)
    assert all(e[("first", "second")[e["label"]]] == e["chosen"] for e in first)
    st = pipe.get_state()
    nxt = [e["prompt"] for e in pipe.next()]
    pipe.set_state(st)
    assert [e["prompt"] for e in pipe.next()] == nxt

    path.write_text(lines[1] + "\n" + lines[2] + "\n")
    with pytest.raises(ValueError, match="no usable preference pairs"):
        read_training_pairs(path, tok, render, max_prompt_tokens=160)


def test_schedule_warms_up_from_a_nonzero_first_update_to_the_peak_then_decays():
    cfg = OptimConfig(lr=1e-3, warmup_steps=4, end_lr_ratio=0.1)
    _, sched = make_optimizer(cfg, total_updates=20)
    lrs = np.array([float(sched(i)) for i in range(21)])
    assert lrs[0] == pytest.approx(1e-3 / 4)  # the first update already moves the weights
    assert np.all(np.diff(lrs[:5]) > 0) and lrs[4] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[4:]) <= 0) and lrs[20] == pytest.approx(1e-4)


def test_the_rrm_authors_verl_parquet_rows_train_with_their_label(tmp_path):
    """Issue 25.2: the RRM authors' verl-style rows {question, response1, response2, answer "1" | "2"}, as parquet,
    are pairs whose chosen is the answer's response; the pipeline then shows them in its seeded random order."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from rrm_jax.core.tokenizers import byte_tokenizer
    from rrm_jax.judge.prompt import make_render
    from rrm_jax.training.data import PairPipeline, read_training_pairs

    rows = [
        {"question": f"{i}+{i}=?", "response1": str(2 * i + (i % 2)), "response2": str(2 * i + 1 - (i % 2)),
         "answer": "1" if i % 2 == 0 else "2", "data_source": "rrm"}
        for i in range(6)
    ]  # fmt: skip
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    tok, render = byte_tokenizer(), make_render(byte_tokenizer(), "short")
    pairs, rep = read_training_pairs(path, tok, render, max_prompt_tokens=160)
    assert rep["kept"] == 6 and [p["chosen"] for p in pairs] == [str(2 * i) for i in range(6)]
    assert [p["rejected"] for p in pairs] == [str(2 * i + 1) for i in range(6)]
    cfg = load_config(None, ["grpo.prompts_per_step=6", "data.max_prompt_tokens=160"])
    shown = PairPipeline(path, render, tok, cfg).next()
    assert {e["label"] for e in shown} == {0, 1}  # both orders occur, each label following its chosen
    assert all(e[("first", "second")[e["label"]]] == e["chosen"] for e in shown)


def test_vocab_split_logits_keep_the_heads_gradient_split():
    """On a pure-FSDP mesh the log-prob chunks split the vocabulary over the devices (``act_vocab``), so the
    update never holds the head's float32 gradient whole: its temporaries fall by at least 7/8 of it. (The
    numerics of the split layout: test_sharded_step_matches_single_device.)"""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake CPU) devices")
    import dataclasses

    from rrm_jax.core.config import resolve_config
    from rrm_jax.core.sharding import DEFAULT_RULES, make_mesh

    cfg = dataclasses.replace(resolve_config("tiny"), vocab_size=16384)
    objective = GRPO(LossConfig(logprob_chunk=64))
    dtypes = dict(tokens=jnp.int32, targets=jnp.int32, positions=jnp.int32, mask=bool, loss_mask=bool)
    batch = {
        k: jax.ShapeDtypeStruct((16,) if k == "advantages" else (16, 256), dtypes.get(k, jnp.float32))
        for k in objective.keys
    }
    temps = {}
    for split in (DEFAULT_RULES.act_vocab, None):
        model = rrm_jax.init(
            cfg, mesh=make_mesh((1, 8, 1)), rules=dataclasses.replace(DEFAULT_RULES, act_vocab=split), remat="full"
        )
        tx, _ = make_optimizer(OPT, 10)
        state = jax.eval_shape(lambda: init_state(model, tx))
        step = make_train_step(model, OPT, 10, objective, micro_batches=2)
        temps[split] = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    head = cfg.hidden_size * cfg.vocab_size * 4
    assert temps[None] - temps[DEFAULT_RULES.act_vocab] >= head * 7 / 8, temps
