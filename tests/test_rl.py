"""GRPO maths against independent NumPy re-derivations (loops, not the vectorised code under test)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fakes import FakeCompletion
from rrm_jax.training.rl import advantages as adv
from rrm_jax.training.rl.loss import (
    AGGREGATIONS,
    LossConfig,
    chunked_logprobs,
    grpo_loss,
    k3_kl,
    mean_weights,
    sft_loss,
    token_weights,
)
from rrm_jax.training.rl.rollout import assign_sides, pack, rollout, to_prompt

# ------------------------------------------------------------------------------------------ advantages
REWARDS = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, -1, 0.5], np.float32)  # 3 groups of 4


def _loop_advantages(r, g, method, eps=1e-6):
    out = []
    for grp in r.reshape(-1, g):
        mean = sum(grp) / g
        var = sum((x - mean) ** 2 for x in grp) / (g - 1)
        for i, x in enumerate(grp):
            if method == "grpo":
                out.append((x - mean) / (math.sqrt(var) + eps))
            elif method == "drgrpo":
                out.append(x - mean)
            else:
                others = [y for j, y in enumerate(grp) if j != i]
                out.append(x - sum(others) / len(others))
    return np.array(out, np.float32)


@pytest.mark.parametrize("method", ["grpo", "drgrpo", "rloo"])
def test_advantages_match_loops(method):
    got = adv.compute(REWARDS, 4, method)
    np.testing.assert_allclose(got, _loop_advantages(REWARDS, 4, method), rtol=1e-5, atol=1e-6)
    # a unanimous group carries no signal under every estimator
    np.testing.assert_allclose(got[4:8], 0.0, atol=1e-6)
    # [P, G] input is the same as flat
    np.testing.assert_allclose(adv.compute(REWARDS.reshape(3, 4), 4, method), got)


def test_advantages_edge_cases():
    np.testing.assert_array_equal(adv.compute([1.0, -1.0], 1, "grpo"), [0.0, 0.0])
    np.testing.assert_array_equal(adv.compute([1.0, -1.0], 1, "rloo"), [0.0, 0.0])
    with pytest.raises(ValueError, match="groups of 4"):
        adv.compute(np.ones(6), 4)
    with pytest.raises(ValueError, match="unknown advantage"):
        adv.compute(np.ones(4), 4, "ppo")


# ------------------------------------------------------------------------------------------ loss
def _inputs(seed=0, b=5, t=7):
    rng = np.random.default_rng(seed)
    logp = rng.normal(-2.0, 0.5, (b, t)).astype(np.float32)
    old = (logp + rng.normal(0, 0.3, (b, t))).astype(np.float32)  # ratios well outside [0.8, 1.28]
    ref = (logp + rng.normal(0, 0.2, (b, t))).astype(np.float32)
    a = rng.normal(0, 1, b).astype(np.float32)
    mask = np.zeros((b, t), bool)
    for i, (s, e) in enumerate([(1, 7), (2, 4), (0, 0), (3, 7), (0, 1)]):  # row 2: no loss tokens (padding)
        mask[i, s:e] = True
    return logp, old, ref, a, mask


def _numpy_loss(logp, old, ref, a, mask, cfg):
    b, t = logp.shape
    per_seq, tok_losses, n_tok = [], [], 0
    clipped = kls = 0.0
    for i in range(b):
        row = []
        for j in range(t):
            if not mask[i, j]:
                continue
            r = math.exp(logp[i, j] - old[i, j])
            rc = min(max(r, 1 - cfg.eps_low), 1 + cfg.eps_high)
            pg = max(-a[i] * r, -a[i] * rc)
            d = ref[i, j] - logp[i, j]
            kl = math.exp(d) - d - 1
            row.append(pg + cfg.beta * kl)
            clipped += float(-a[i] * rc > -a[i] * r)
            kls += kl
        if row:
            per_seq.append(row)
            tok_losses += row
            n_tok += len(row)
    if cfg.aggregation == "token-mean":
        loss = sum(tok_losses) / n_tok
    elif cfg.aggregation == "seq-mean-token-mean":
        loss = sum(sum(r) / len(r) for r in per_seq) / len(per_seq)
    else:
        loss = sum(sum(r) / cfg.norm_length for r in per_seq) / len(per_seq)
    return loss, clipped / n_tok, kls / n_tok


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_grpo_loss_matches_numpy(aggregation, beta):
    logp, old, ref, a, mask = _inputs()
    cfg = LossConfig(eps_low=0.2, eps_high=0.28, beta=beta, aggregation=aggregation, norm_length=11)
    w = token_weights(jnp.asarray(mask), aggregation, cfg.norm_length)
    loss, met = grpo_loss(
        jnp.asarray(logp),
        jnp.asarray(old),
        jnp.asarray(ref),
        jnp.asarray(a),
        jnp.asarray(mask),
        w,
        mean_weights(jnp.asarray(mask)),
        cfg,
    )
    want, clip_frac, kl = _numpy_loss(logp, old, ref, a, mask, cfg)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(met["clip_frac"]), clip_frac, rtol=1e-5)
    assert 0 < clip_frac < 1  # the fixture exercises both branches
    if beta:
        np.testing.assert_allclose(float(met["kl"]), kl, rtol=1e-5)
    else:
        assert "kl" not in met


def test_beta_zero_ignores_reference():
    logp, old, ref, a, mask = _inputs()
    cfg = LossConfig(beta=0.0)
    w, mw = token_weights(jnp.asarray(mask), cfg.aggregation), mean_weights(jnp.asarray(mask))
    l1, _ = grpo_loss(logp, old, ref, a, mask, w, mw, cfg)
    l2, _ = grpo_loss(logp, old, np.full_like(ref, np.nan), a, mask, w, mw, cfg)
    assert float(l1) == float(l2)


def test_k3_kl_closed_form():
    # k3 is exp(d) - d - 1 >= 0, zero iff the log-probs agree; its mean over samples from pi estimates KL(pi||ref).
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.5, 0.3])
    kl_true = float(np.sum(p * np.log(p / q)))
    est = float(np.sum(p * np.asarray(k3_kl(jnp.log(p), jnp.log(q)))))
    np.testing.assert_allclose(est, kl_true, rtol=1e-5)  # E_p[q/p - 1 - log(q/p)] = KL exactly
    assert float(k3_kl(jnp.float32(-1.0), jnp.float32(-1.0))) == 0.0


def test_grpo_loss_gradient_sign():
    # with ratio 1, d loss / d logp = -A * w: a positive advantage pushes its tokens up
    logp, _, ref, a, mask = _inputs()
    cfg = LossConfig(aggregation="token-mean")
    w, mw = token_weights(jnp.asarray(mask), "token-mean"), mean_weights(jnp.asarray(mask))
    g = jax.grad(lambda lp: grpo_loss(lp, jax.lax.stop_gradient(lp), ref, a, mask, w, mw, cfg)[0])(jnp.asarray(logp))
    np.testing.assert_allclose(np.asarray(g), -a[:, None] * mask / mask.sum(), rtol=1e-6, atol=1e-9)


def test_sft_loss_is_masked_mean_nll():
    logp, *_, mask = _inputs()
    m = jnp.asarray(mask)
    loss, met = sft_loss(jnp.asarray(logp), m, token_weights(m, "token-mean"), mean_weights(m))
    np.testing.assert_allclose(float(loss), -logp[mask].mean(), rtol=1e-6)


def test_loss_config_rejects_bad_values():
    with pytest.raises(ValueError, match="aggregation"):
        LossConfig(aggregation="sum")
    with pytest.raises(ValueError):
        LossConfig(beta=-1)


# ------------------------------------------------------------------------------------------ chunked log-probs
@pytest.fixture(scope="module")
def tiny(mesh1):
    import rrm_jax

    return rrm_jax.init("tiny", seed=0, mesh=mesh1)


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_chunked_logprobs_match_full_log_softmax(tiny):
    rng = np.random.default_rng(1)
    b, t = 3, 20  # chunk 6 does not divide 20: the padded tail must not leak
    tokens = rng.integers(0, tiny.config.vocab_size, (b, t + 1)).astype(np.int32)
    mask = np.ones((b, t), bool)
    mask[1, 15:] = False
    logits = np.asarray(tiny.logits(tokens[:, :-1], mask), np.float64)
    lsm = _np_log_softmax(logits)
    want_lp = np.take_along_axis(lsm, tokens[:, 1:, None], -1)[..., 0]
    want_ent = -(np.exp(lsm) * lsm).sum(-1)
    module = tiny.module
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    h, _ = module(jnp.asarray(tokens[:, :-1]), jnp.asarray(pos), jnp.asarray(mask), return_hidden=True)
    for chunk in (6, 20, 64):
        lp, ent = chunked_logprobs(module, h, jnp.asarray(tokens[:, 1:]), chunk)
        np.testing.assert_allclose(np.asarray(lp)[mask], want_lp[mask], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ent)[mask], want_ent[mask], rtol=1e-5, atol=1e-5)


def test_chunked_logprob_gradient_equals_full(tiny):
    from flax import nnx

    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, tiny.config.vocab_size, (2, 13)).astype(np.int32))
    inp, tgt = tokens[:, :-1], tokens[:, 1:]

    def chunked(state):
        m = nnx.merge(tiny.graphdef, state)
        h, _ = m(inp, return_hidden=True)
        return chunked_logprobs(m, h, tgt, 5)[0].sum()

    def full(state):
        logits, _ = nnx.merge(tiny.graphdef, state)(inp)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1).sum()

    g1, g2 = jax.grad(chunked)(tiny.state), jax.grad(full)(tiny.state)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ rollout assembly
def test_pack_places_completion_targets():
    batch = pack(
        [[5, 6, 7], [9]],
        [[1, 2], [3, 4, 8]],
        completion_logprobs=[np.array([-0.1, -0.2]), np.array([-1, -2, -3.0])],
        completion_masks=[np.array([1, 1]), np.array([1, 0, 1])],
        row_multiple=4,
    )
    assert batch["tokens"].shape == (4, 16)
    np.testing.assert_array_equal(batch["tokens"][0, :4], [5, 6, 7, 1])
    np.testing.assert_array_equal(batch["targets"][0, :4], [6, 7, 1, 2])
    # the loss covers exactly the targets that are completion tokens (and the per-token mask)
    np.testing.assert_array_equal(np.nonzero(batch["loss_mask"][0])[0], [2, 3])
    np.testing.assert_array_equal(np.nonzero(batch["loss_mask"][1])[0], [0, 2])
    np.testing.assert_allclose(batch["old_logp"][1, :3], [-1, -2, -3])
    assert not batch["mask"][2:].any() and batch["mask"][1].sum() == 3
    with pytest.raises(ValueError, match="seq_bucket"):
        pack([[1] * 10], [[2] * 10], seq_bucket=8)


def test_assign_sides_is_seeded_and_labels_follow_chosen():
    pairs = [{"query": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(64)]
    f1 = assign_sides(pairs, seed=3, step=5)
    np.testing.assert_array_equal(f1, assign_sides(pairs, seed=3, step=5))
    assert 16 < f1.sum() < 48 and not np.array_equal(f1, assign_sides(pairs, seed=3, step=6))
    assert not assign_sides(pairs, seed=3, step=5, swap=False).any()
    render = lambda q, a, b: [ord(c) for c in f"{q}|{a}|{b}"]
    for flip in (False, True):
        ex = to_prompt(pairs[0], flip, render, None)
        shown = [ex["first"], ex["second"]]
        assert shown[ex["label"]] == "good" and shown[1 - ex["label"]] == "bad"


def test_rollout_with_fake_sampler_builds_batch():
    from rrm_jax.training.rl.rewards import verdict_reward

    texts = [
        "a</think>\\boxed{Assistant 1}",
        "b</think>\\boxed{Assistant 2}",
        "no verdict",
        "c</think>\\boxed{Assistant 1}",
    ]
    seen = {}

    def fake_generate(policy, prompts, sampling):
        seen["n"], seen["prompts"] = sampling.n, prompts
        out = []
        for _ in range(len(prompts)):
            for s in range(sampling.n):
                ids = [10 + s, 11, 12][: 1 + (s % 3)]
                out.append(
                    FakeCompletion(
                        ids,
                        texts[s],
                        -0.5 * np.ones(len(ids), np.float32),
                        num_tokens=len(ids),
                        forced_at=0 if s == 3 else None,
                    )
                )
        return out

    examples = [
        dict(prompt_ids=np.array([1, 2, 3], np.int32), label=0, query="q", prompt="P0"),
        dict(prompt_ids=np.array([4, 5], np.int32), label=1, query="q", prompt="P1"),
    ]
    from rrm_jax.sampler import SamplingConfig

    ro = rollout(
        None,
        examples,
        group_size=4,
        sampling=SamplingConfig(),
        reward_fn=verdict_reward,
        generate_fn=fake_generate,
        row_multiple=8,
        forced_len=1,
    )
    assert seen["n"] == 4 and seen["prompts"] == [[1, 2, 3], [4, 5]]
    np.testing.assert_array_equal(ro.rewards, [1, -1, -1, 1, -1, 1, -1, -1])
    np.testing.assert_allclose(ro.batch["advantages"], adv.compute(ro.rewards, 4, "grpo"))
    assert ro.stats["accuracy"] == pytest.approx(3 / 8) and ro.stats["invalid_frac"] == pytest.approx(0.25)
    # row 3 (sample 3, forced at 0): its first completion token is masked out of the loss
    assert ro.batch["loss_mask"][3].sum() == 0 and ro.batch["loss_mask"][2].sum() == 3
    np.testing.assert_array_equal(ro.batch["tokens"][4, :2], [4, 5])
