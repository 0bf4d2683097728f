"""DPO: the loss in closed form, the train step against a float64 NumPy re-derivation (sequence log-probs of two
independent checkpoints, padding, micro-batches), the recipe run (the loss falls, a killed run resumes bit for bit),
the [dpo] config checks and the pair file reader."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
import rrm_jax
from rrm_jax.core.errors import ConfigError
from rrm_jax.core.tokenizers import byte_tokenizer
from rrm_jax.training.config import GRPOConfig, OptimConfig, TrainConfig, load_config
from rrm_jax.training.rl.dpo import DPOConfig, dpo_loss
from runs import killed_at, records
from tiny_configs import TINY_CONFIGS

RECIPE = Path(__file__).parents[1] / "train" / "dpo-tiny.toml"


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


# ------------------------------------------------------------------------------------------ loss
def test_loss_closed_form_on_hand_made_logprobs():
    # pairs: (policy chosen, policy rejected, ref chosen, ref rejected); m = (-1+3) - (-2+2) = 2, then 0, then -4
    pc, pr = np.array([-1.0, -5.0, -5.0]), np.array([-3.0, -5.0, -1.0])
    rc, rr = np.array([-2.0, -4.0, -2.0]), np.array([-2.0, -4.0, -2.0])
    seq, refs = jnp.asarray(np.r_[pc, 0.0, pr, 0.0]), jnp.asarray(np.r_[rc, 0.0, rr, 0.0])  # a 4th empty slot
    w = jnp.asarray(np.tile(np.r_[np.full(3, 1 / 3), 0.0], 2))
    loss, met = dpo_loss(seq, refs, w, beta=0.5)
    # beta*m = 1, 0, -2: -mean(log sigmoid) = mean(log(1 + e^-1), log 2, log(1 + e^2))
    want = np.mean([np.log1p(np.exp(-1.0)), np.log(2.0), np.log1p(np.exp(2.0))])
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    np.testing.assert_allclose(float(met["reward_margin"]), (1 + 0 - 2) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(met["reward_accuracy"]), 1 / 3, rtol=1e-6)  # m > 0 only for the first
    np.testing.assert_allclose(float(met["chosen_reward"]), 0.5 * np.mean(pc - rc), rtol=1e-6)
    np.testing.assert_allclose(float(met["rejected_reward"]), 0.5 * np.mean(pr - rr), rtol=1e-6)
    # label smoothing 0.25 weighs the flipped label's loss log(1 + e^{beta m}) by a quarter
    ls, _ = dpo_loss(seq, refs, w, beta=0.5, label_smoothing=0.25)
    z = np.array([1.0, 0.0, -2.0])
    np.testing.assert_allclose(float(ls), np.mean(0.75 * np.log1p(np.exp(-z)) + 0.25 * np.log1p(np.exp(z))), rtol=1e-6)
    # the gradient pushes chosen up and rejected down, and is zero on the empty slot
    g = jax.grad(lambda s: dpo_loss(s, refs, w, beta=0.5)[0])(seq)
    assert np.all(np.asarray(g[:3]) < 0) and np.all(np.asarray(g[4:7]) > 0) and g[3] == 0 and g[7] == 0


# ------------------------------------------------------------------------------------------ step vs NumPy
PAIRS = [
    {"query": "2+3=?", "chosen": "5", "rejected": "six"},
    {"query": "What is 7 times 6?", "chosen": "It is 42.", "rejected": "41"},
    {"query": "hi", "chosen": "hello there", "rejected": "go away"},
]


def _numpy_seq_logp(w, cfg, tok, pair, side) -> float:
    """Sum of log-probs of the completion (text + EOS) after the chat prompt, in float64 NumPy."""
    prompt = tok.encode(
        tok.apply_chat_template(
            [{"role": "user", "content": pair["query"]}], add_generation_prompt=True, tokenize=False
        ),
        add_special_tokens=False,
    )
    comp = tok.encode(pair[side], add_special_tokens=False) + [tok.eos_token_id]
    seq = np.array(prompt + comp)
    z = ref.logits(w, cfg, seq[None, :-1])[0]
    lsm = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    return float(sum(lsm[len(prompt) - 1 + j, c] for j, c in enumerate(comp)))


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, mesh1):
    cfg = TINY_CONFIGS["qwen2-untied-g2-hd128-1e6"]  # vocab 300 holds the byte tokenizer's 262 ids
    root = tmp_path_factory.mktemp("dpo-ckpt")
    out = []
    for seed in (1, 2):
        w = ref.random_checkpoint(root / str(seed), cfg, num_layers=2, seed=seed, std=0.1)
        model = rrm_jax.load(root / str(seed), mesh=mesh1, dtype=jnp.float32, tokenizer=None)
        out.append((w, dataclasses.replace(model, tokenizer=byte_tokenizer())))
    return cfg, out


def _trainer(model, micro):
    from rrm_jax.training.trainer import Trainer

    cfg = TrainConfig(
        mode="dpo",
        batch_size=3,
        optim=OptimConfig(lr=1e-3, micro_batches=micro),
        dpo=DPOConfig(beta=0.2, label_smoothing=0.1),
        grpo=GRPOConfig(logprob_chunk=8),
    )
    return Trainer(model, cfg)


def test_dpo_step_matches_numpy_reference(two_checkpoints):
    cfg, [(wa, policy), (wb, other)] = two_checkpoints
    tok = policy.tokenizer
    lp = {
        k: np.array([_numpy_seq_logp(w, cfg, tok, p, s) for p in PAIRS])
        for k, w, s in [("pc", wa, "chosen"), ("pr", wa, "rejected"), ("rc", wb, "chosen"), ("rr", wb, "rejected")]
    }
    m = (lp["pc"] - lp["pr"]) - (lp["rc"] - lp["rr"])
    z = 0.2 * m
    want = -np.mean(0.9 * _log_sigmoid(z) + 0.1 * _log_sigmoid(-z))
    assert np.any(m > 0) and np.any(m < 0) and np.all(np.abs(z) < 5)  # both signs, off the saturated tails

    states = []
    for micro in (2, 1):  # 3 pairs -> 4 slots (2 micro-batches) or 3 (one): a padded slot must weigh nothing
        tr = _trainer(policy, micro)
        tr.ref_params = other.state  # an independent reference, so the margin is not trivially zero
        met = tr.dpo_step(PAIRS)
        np.testing.assert_allclose(met["loss"], want, rtol=1e-4, err_msg=f"micro={micro}")
        np.testing.assert_allclose(met["reward_margin"], np.mean(z), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(met["reward_accuracy"], np.mean(m > 0), atol=1e-6)
        np.testing.assert_allclose(met["chosen_reward"], 0.2 * np.mean(lp["pc"] - lp["rc"]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(met["rejected_reward"], 0.2 * np.mean(lp["pr"] - lp["rr"]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(met["logp_chosen"], np.mean(lp["pc"]), rtol=1e-4)
        assert met["pairs"] == 3 and met["skipped"] == 0 and met["grad_norm"] > 0
        states.append(jax.device_get(tr.state.params))
    # accumulating two micro-batches gives the one-batch update. Adam moves each weight by ~lr * g / |g|, so where
    # a gradient is near zero the summation order (which XLA's fusions choose) moves the step by a fraction of lr:
    # nearly every weight agrees to 2e-5, and every one to 5% of lr
    lr = 1e-3
    for a, b in zip(jax.tree_util.tree_leaves(states[0]), jax.tree_util.tree_leaves(states[1])):
        diff = np.abs(np.asarray(a) - np.asarray(b))
        assert diff.max() <= 0.05 * lr and np.mean(diff > 2e-5 + 1e-5 * np.abs(np.asarray(b))) < 0.01, diff.max()
    moved = jax.tree_util.tree_leaves(states[1])[0] - np.asarray(jax.tree_util.tree_leaves(policy.state)[0])
    assert np.abs(moved).max() > 1e-4  # the update moved the weights (the comparison is not vacuous)


def test_first_step_reference_is_the_initial_policy(two_checkpoints):
    _, [(_, policy), _] = two_checkpoints
    tr = _trainer(policy, 1)
    first = tr.dpo_step(PAIRS)
    # the reference is the policy itself: m = 0 for every pair, loss = log 2
    np.testing.assert_allclose(first["loss"], np.log(2.0), rtol=1e-5)
    assert abs(first["reward_margin"]) < 1e-5
    second = tr.dpo_step(PAIRS)
    assert second["reward_margin"] > 1e-4 and second["loss"] < np.log(2.0)  # the update favoured the chosen


def test_sharded_dpo_step_matches_single_device(two_checkpoints):
    """Pair halves split over data and FSDP shards (and two micro-batches) give the one-device step."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake CPU) devices")
    from rrm_jax.core.sharding import make_mesh

    _, [(_, policy), (_, other)] = two_checkpoints
    mesh8 = make_mesh((2, 2, 2))
    m8 = dataclasses.replace(policy, mesh=mesh8)  # the same weights, laid out over 8 devices
    m8 = m8.with_state(jax.device_put(policy.state, m8.state_shardings))
    assert m8.batch_multiple() == 4
    results = []
    for model, micro in ((policy, 1), (m8, 2)):
        tr = _trainer(model, micro)
        tr.ref_params = jax.device_put(other.state, model.state_shardings)
        results.append((tr.dpo_step(PAIRS), tr.dpo_step(PAIRS), jax.device_get(tr.state.params)))
    (a1, a2, pa), (b1, b2, pb) = results
    for k in ("loss", "reward_margin", "chosen_reward", "grad_norm"):
        np.testing.assert_allclose([b1[k], b2[k]], [a1[k], a2[k]], rtol=1e-4, atol=1e-6, err_msg=k)
    # Adam's ~lr * sign(g) steps amplify summation-order noise in tiny gradient entries; a pair split wrongly over
    # the shards would already have changed the losses above (and moves weights by ~lr = 1e-3)
    for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=2e-4)


# ------------------------------------------------------------------------------------------ run + resume
def _cfg(run_dir, steps):
    return load_config(
        RECIPE,
        [
            f"run_dir='{run_dir}'",
            f"steps={steps}",
            "save_every=2",
            "mesh=[1,1,1]",
            "optim.lr=3e-3",
            "tensorboard=false",
        ],
    )


@pytest.mark.slow
def test_dpo_recipe_trains_and_resumes_bit_for_bit(tmp_path, mesh1):
    from rrm_jax.training.loop import train

    def model():
        return rrm_jax.init("tiny", seed=0, mesh=mesh1, tokenizer=byte_tokenizer())

    full = train(_cfg(tmp_path / "a", 6), model=model(), progress=False)
    assert full["data"]["kept"] == 8 and full["skipped_total"] == 0

    killed_at(3, lambda **kw: train(_cfg(tmp_path / "b", 6), model=model(), progress=False, **kw))
    resumed = train(_cfg(tmp_path / "b", 6), model=model(), progress=False)
    assert resumed["resumed_from"] == 2
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert a == b  # every metric of every step, bit for bit
    assert (tmp_path / "a" / "hf" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "hf" / "model.safetensors"
    ).read_bytes()
    # 8 fixed pairs, 4 a step: the policy learns them (loss from log 2 down, margins up)
    loss = [r["loss"] for r in a]
    np.testing.assert_allclose(loss[0], np.log(2.0), atol=1e-4)
    assert np.mean(loss[-2:]) < loss[0] - 0.05, loss
    assert a[-1]["reward_margin"] > 0.05 and a[-1]["reward_accuracy"] >= 0.75
    assert load_config(tmp_path / "a" / "config.toml") == _cfg(tmp_path / "a", 6)


# ------------------------------------------------------------------------------------------ config + data
@pytest.mark.parametrize(
    "override, message",
    [
        ("dpo.beta=0", "TrainConfig.dpo.beta=0.0: must be > 0"),
        ("dpo.label_smoothing=0.5", "TrainConfig.dpo.label_smoothing=0.5: must lie in [0, 0.5)"),
        ("mode='ppo'", "mode must be grpo, sft or dpo, got 'ppo'"),
    ],
)
def test_dpo_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)").replace(".", r"\.")):
        load_config(RECIPE, [override])


def test_recipe_loads_as_dpo():
    cfg = load_config(RECIPE)
    assert cfg.mode == "dpo" and cfg.dpo == DPOConfig(beta=0.1, label_smoothing=0.0) and cfg.batch_size == 4


def test_pair_reader_drops_bad_lines_with_counts_and_packs_halves(tmp_path):
    from rrm_jax.training.dpo import pack_pairs, read_dpo_pairs

    tok = byte_tokenizer()
    path = tmp_path / "pairs.jsonl"
    lines = [
        json.dumps({"query": "1+1=?", "chosen": "2", "rejected": "3", "confidence": 0.9}),
        "{not json",
        json.dumps({"query": "q", "chosen": "same", "rejected": "same"}),
        json.dumps({"query": "q", "chosen": "x" * 200, "rejected": "y"}),
        json.dumps({"query": "2+2=?", "chosen": "4", "rejected": "five"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    items, report = read_dpo_pairs(path, tok, max_len=64)
    assert [i["chosen"] for i in items] == ["2", "4"] and report["read"] == 5 and report["kept"] == 2
    assert sum(report["dropped"].values()) == 3 and any(":2: invalid JSON" in p for p in report["problems"])
    batch = pack_pairs(items, slots=4, seq_bucket=32)
    assert batch["tokens"].shape == (8, 32)
    # rows 0, 1 chosen and 4, 5 rejected (same prompt, completions + EOS); slots 2, 3 and 6, 7 are empty
    for row, text in [(0, "2"), (1, "4"), (4, "3"), (5, "five")]:
        ids = batch["targets"][row][batch["loss_mask"][row]]
        assert tok.decode(ids[:-1]) == text and ids[-1] == tok.eos_token_id
    assert batch["loss_mask"][[2, 3, 6, 7]].sum() == 0
    np.testing.assert_array_equal(batch["tokens"][0][:5], batch["tokens"][4][:5])
