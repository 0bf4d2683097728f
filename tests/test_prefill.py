"""Chunked prefill against independent references: ragged prompts (1 token, exactly a chunk, several chunks
and a remainder) give the greedy tokens and log-probs of a float64 NumPy re-derivation of the model (run on
each prompt alone, no cache) and of transformers' generate; each prompt pays < one chunk of padding, its
samples share one prefill, and prefill interleaves with decode without stalling running rows for longer than
the bound."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference
import rrm_jax
from rrm_jax.sampler import GenerateStats, SamplingConfig, generate
from tiny_configs import TINY_CONFIGS

C = 8  # chunk: small, so short test prompts span several chunks
NEW = 6
CFG = TINY_CONFIGS["qwen2-untied-g2-hd128-1e6"]
rng = np.random.default_rng(0)
# 1 token, exactly one chunk, exactly two chunks, three chunks and a remainder, a long one
PROMPTS = [rng.integers(1, 300, n).tolist() for n in (1, C, 2 * C, 3 * C + 5, 50)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefill_qwen2")
    return path, numpy_reference.random_checkpoint(path, CFG)


@pytest.fixture(scope="module")
def model(ckpt, mesh1):
    return rrm_jax.load(ckpt[0], mesh=mesh1, dtype=jnp.float32)


def numpy_greedy(w, prompt: list[int], new: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and their log-probs from full float64 forwards over the prompt alone (no cache, no chunks)."""
    seq, lps = list(prompt), []
    for _ in range(new):
        lg = numpy_reference.logits(w, CFG, [seq])[0, -1]
        lp = lg - lg.max() - np.log(np.sum(np.exp(lg - lg.max())))
        seq.append(int(np.argmax(lg)))
        lps.append(lp[seq[-1]])
    return seq[len(prompt) :], np.asarray(lps)


@pytest.fixture(scope="module")
def reference(ckpt):
    return [numpy_greedy(ckpt[1], p, NEW) for p in PROMPTS]


def greedy(**kw) -> SamplingConfig:
    return SamplingConfig(**{"max_new_tokens": NEW, "temperature": 0.0, "add_eos_stop": False, **kw})


@pytest.mark.parametrize("rows", [2, 4])
def test_ragged_chunks_match_reference(model, reference, rows):
    st = GenerateStats()
    outs = generate(model, PROMPTS, greedy(max_slots=8), prefill_chunk=C, prefill_rows=rows, stats=st)
    for i, (c, (want, lp)) in enumerate(zip(outs, reference)):
        assert c.token_ids == want, f"prompt {i} (len {len(PROMPTS[i])})"
        np.testing.assert_allclose(c.logprobs, lp, atol=2e-4, err_msg=f"prompt {i}")
    lens = [len(p) for p in PROMPTS]
    assert st.prefill_tokens == sum(lens) and st.prefill_rows == len(PROMPTS)
    # every prompt pays less than one chunk of padding: no call carries an idle row
    assert st.prefill_positions == sum(-(-n // C) * C for n in lens)
    # 15 chunks in all, 7 of them the longest prompt's: most-tokens-left-first meets the lower bound
    assert st.prefill_calls == max(7, -(-15 // rows))


def test_one_prefill_per_prompt_for_all_its_samples(model):
    cfg = SamplingConfig(max_new_tokens=NEW, temperature=1.0, n=3, seed=5, max_slots=8, add_eos_stop=False)
    st = GenerateStats()
    chunked = generate(model, PROMPTS[3:5], cfg, prefill_chunk=C, stats=st)
    whole = generate(model, PROMPTS[3:5], cfg)  # default chunk: each prompt in one piece
    assert [c.token_ids for c in chunked] == [c.token_ids for c in whole]
    assert len({tuple(c.token_ids) for c in chunked[:3]}) > 1  # the samples differ; their prompt ran once
    assert st.prefill_rows == 2 and st.prefill_tokens == len(PROMPTS[3]) + len(PROMPTS[4])


LONG = [PROMPTS[0], PROMPTS[4], PROMPTS[4][::-1], PROMPTS[3] + PROMPTS[2]]  # a short prompt, then three long
LONG_LIMITS = [NEW, 3, 4, 2]


@pytest.fixture(scope="module")
def long_reference(ckpt, reference):
    return [reference[0][0]] + [numpy_greedy(ckpt[1], p, k)[0] for p, k in zip(LONG[1:], LONG_LIMITS[1:])]


def test_long_prompts_interleave_with_decode(model, long_reference):
    """A short prompt decodes while three long ones prefill; it waits for at most ``max_stall`` prefill calls."""
    waits = {}
    for stall in (2, 99):
        st = GenerateStats()
        outs = generate(
            model,
            LONG,
            greedy(max_slots=4),
            max_new_tokens=LONG_LIMITS,
            prefill_chunk=C,
            max_stall=stall,
            prefill_steps=2,
            stats=st,
        )
        assert [c.token_ids for c in outs] == long_reference, stall
        waits[stall] = st.prefill_waits
    # while the three long prompts (6-7 chunks each) outnumber the one running row, it waits at most max_stall
    # calls; unbounded, it would wait until only one long prompt is left prefilling
    assert waits[2] == 2 and waits[99] > 2


@pytest.mark.parametrize("continuous", [True, False])
def test_more_long_prompts_than_slots(model, long_reference, continuous):
    """More requests than slots: refills prefill in chunks while other rows decode (or, static, between
    batches); the same tokens."""
    kw = dict(refill_min=1) if continuous else dict(continuous=False)
    outs = generate(model, LONG, greedy(max_slots=2), max_new_tokens=LONG_LIMITS, prefill_chunk=C, **kw)
    assert [c.token_ids for c in outs] == long_reference


def test_ragged_chunks_match_transformers(ckpt, model):
    """transformers' generate on each prompt alone (where torch is installed)."""
    from transformers import AutoModelForCausalLM

    from hf_reference import torch  # skips here without torch

    hf = AutoModelForCausalLM.from_pretrained(str(ckpt[0]), dtype=torch.float32).eval()
    outs = generate(model, PROMPTS, greedy(max_slots=8), prefill_chunk=C)
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([p])
        with torch.no_grad():
            want = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )[0, len(p) :].tolist()
        assert outs[i].token_ids == want, f"prompt {i} (len {len(p)})"


def test_attention_window_covers_the_extent_with_few_shapes():
    from rrm_jax.sampler.prefill import window

    step, cap = 128, 40_000
    got = {n: window(n, step, cap) for n in range(1, 33_000)}
    for n, w in got.items():
        assert n <= w <= cap, (n, w)
        # multiples of the step up to 8 steps; past that at most a quarter of the extent's power of two wasted
        waste = step if n <= 8 * step else (1 << ((n - 1).bit_length() - 1)) // 4
        assert w == cap or (w % step == 0 and w - n < waste), (n, w)
    for lo in (1024, 2048, 4096, 8192, 16384):  # four shapes per doubling
        assert len({got[n] for n in range(lo + 1, 2 * lo + 1)}) == 4, lo
    assert window(1, 128, 100) == 100 and window(5000, 128, 3000) == 3000  # never past the cache
    assert window(9, 8, 1000) == 128 and window(129, 8, 1000) == 256  # a finer chunk still steps by 128 slots
