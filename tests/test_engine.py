"""The sampling engine (issue 23.1): requests with their own settings share a batch, requests join a running batch,
cancelled requests free their slots, and every completion equals the same request sampled alone by ``generate``
(whose own tests hold it to transformers and closed forms). The planner's shapes are the ones run and planned."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rrm_jax
from rrm_jax.core.tokenizers import byte_tokenizer
from rrm_jax.sampler import SamplingConfig, generate
from rrm_jax.sampler.engine import Engine
from rrm_jax.sampler.planner import plan
from rrm_jax.sampler.sampling import sample

BASE = SamplingConfig(max_new_tokens=12, temperature=0.0, add_eos_stop=False, max_slots=4)
SETTINGS = [
    BASE,
    dataclasses.replace(BASE, temperature=0.9, seed=3),
    dataclasses.replace(BASE, temperature=0.7, top_p=0.8, seed=5, n=2),
    dataclasses.replace(BASE, temperature=1.2, min_p=0.1, seed=7, max_new_tokens=5),
]
PROMPTS = ["the first prompt", "b", "a third, longer prompt than the others", "four"]


@pytest.fixture(scope="module")
def model(mesh1):
    return rrm_jax.init("tiny", seed=0, mesh=mesh1, dtype=jnp.float32, tokenizer=byte_tokenizer())


def _engine(model, slots=4, max_new=12, **kw):
    shapes = plan(requests=slots, max_slots=slots, batch_multiple=1, prompt_len=64, max_new=max_new, n_stops=1)
    return Engine(model, shapes, BASE, **kw)


def _alone(model, prompt, config):
    """The reference: the request sampled by itself."""
    return [(c.token_ids, c.finish_reason) for c in generate(model, [prompt], config)]


def _got(req):
    return [(c.token_ids, c.finish_reason) for c in req.completions]


def test_requests_with_their_own_settings_share_a_batch_and_equal_each_alone(model):
    eng = _engine(model)
    reqs = [eng.submit(p, c) for p, c in zip(PROMPTS, SETTINGS)]
    eng.run()
    assert eng.stats.decode_chunks >= 1 and eng.stats.rows == 4
    for p, c, r in zip(PROMPTS, SETTINGS, reqs):
        assert _got(r) == _alone(model, p, c), c
    assert len(reqs[3].completions[0].token_ids) == 5  # its own max_new_tokens within the shared batch
    assert reqs[2].completions[0].token_ids != reqs[2].completions[1].token_ids  # n=2: two different samples


def test_a_request_submitted_mid_run_joins_the_running_batch(model):
    eng = _engine(model, chunk_steps=4)  # 4 tokens per decode call: the first request is mid-way after one
    first = eng.submit(PROMPTS[0], BASE)
    for _ in range(8):
        if eng.stats.decode_chunks:
            break
        eng.step()
    assert eng.stats.decode_chunks == 1 and not first.done  # decoding has started, not finished
    late = eng.submit(PROMPTS[2], SETTINGS[1])
    eng.run()
    assert _got(first) == _alone(model, PROMPTS[0], BASE)
    assert _got(late) == _alone(model, PROMPTS[2], SETTINGS[1])


def test_a_cancelled_request_frees_its_slot_and_the_others_are_unchanged(model):
    eng = _engine(model, slots=2, chunk_steps=4)
    keep = eng.submit(PROMPTS[1], SETTINGS[1])
    drop = eng.submit(PROMPTS[0], BASE)
    waiting = eng.submit(PROMPTS[3], SETTINGS[3])  # no slot yet: it waits in the queue
    eng.step()
    assert eng.slots_busy == 2 and len(eng.queue) == 1
    eng.cancel(drop)
    eng.run()
    assert drop.done and drop.cancelled and drop.completions == [None]
    assert _got(keep) == _alone(model, PROMPTS[1], SETTINGS[1])
    assert _got(waiting) == _alone(model, PROMPTS[3], SETTINGS[3])
    assert eng.slots_busy == 0 and not eng.busy


def test_streamed_tokens_are_the_completion(model):
    eng = _engine(model)
    seen: dict[int, list[int]] = {0: [], 1: []}
    req = eng.submit(PROMPTS[2], SETTINGS[2], on_tokens=lambda r, q, ids: seen[q].extend(ids))
    eng.run()
    assert [seen[q] for q in (0, 1)] == [c.token_ids for c in req.completions]


def test_requests_the_engine_cannot_hold_are_refused_naming_the_limit(model):
    eng = _engine(model)
    with pytest.raises(ValueError, match="max_new_tokens=13: this engine allows up to 12"):
        eng.submit("x", dataclasses.replace(BASE, max_new_tokens=13))
    with pytest.raises(ValueError, match="top_k=5: this engine runs 0"):
        eng.submit("x", dataclasses.replace(BASE, top_k=5))
    with pytest.raises(ValueError, match="the prompt has 65 tokens"):
        eng.submit([1] * 65)
    with pytest.raises(ValueError, match="thinking budgets"):
        eng.submit("x", dataclasses.replace(BASE, max_think_tokens=2))


def test_per_row_sampling_settings_equal_one_call_per_row():
    """sample() with a value per row is, row by row, the scalar call (the reference the sampler tests check)."""
    logits = jax.random.normal(jax.random.key(0), (4, 64)) * 3
    keys = jax.random.split(jax.random.key(1), 4)
    temps, top_p, min_p = [0.0, 0.7, 1.3, 0.9], [1.0, 0.8, 0.95, 1.0], [0.0, 0.0, 0.05, 0.2]
    for top_k in (0, 8):
        rows = sample(
            logits, keys, temperature=jnp.array(temps), top_k=top_k, top_p=jnp.array(top_p), min_p=jnp.array(min_p)
        )
        for i in range(4):
            one = sample(
                logits[i : i + 1],
                keys[i : i + 1],
                temperature=jnp.float32(temps[i]),
                top_k=top_k,
                top_p=jnp.float32(top_p[i]),
                min_p=jnp.float32(min_p[i]),
            )
            assert int(rows[i]) == int(one[0]), (top_k, i)
    assert int(rows[0]) == int(jnp.argmax(logits[0]))  # the greedy row of a mixed batch


def test_generate_and_rrm_jax_plan_use_the_planners_shapes(model):
    prompts = [[1, 2, 3], list(range(40))]
    cfg = dataclasses.replace(BASE, n=3, max_slots=8)
    _, st = generate(model, prompts, cfg, return_stats=True)
    p = plan(requests=6, max_slots=8, batch_multiple=1, prompt_len=40, max_new=12, n_stops=0)
    assert (st.rows, st.cache_slots) == (p.shape.slots, p.shape.cache_len) == (8, 64 + 12)

    from rrm_jax.plan.programs import rollout_programs

    abstract = jax.eval_shape(lambda: model.state)
    _, info = rollout_programs(
        "policy", model, abstract, jnp.float32, requests=6, n=3, max_slots=8, prompt_len=40, max_new=12,
        budget=False, resident=0,
    )  # fmt: skip
    assert (info["slots"], info["cache_len"]) == (p.shape.slots, p.shape.cache_len)
    assert np.isfinite(info["kv_cache_bytes"])


@pytest.mark.slow(100)
def test_a_round_robin_shares_its_prompt_prefixes_and_decodes_the_same(mesh1):
    """Issue 23.2: an 8-candidate ELO round robin, both orders, with the RRM prompt and PandaLM-length answers:
    every prompt repeats the system prompt and query, and the 7 that show a candidate first share it too. Copying
    a prefix another row holds computes <= 60% of the prefill positions, with identical greedy outputs."""
    from rrm_jax.core.api import resolve_config
    from rrm_jax.judge.judge import Judge

    cfg = dataclasses.replace(resolve_config("tiny"), max_position_embeddings=4096)
    model = rrm_jax.init(cfg, seed=0, mesh=mesh1, dtype=jnp.float32, tokenizer=byte_tokenizer())
    judge = Judge(model)
    query = "Summarise the following paragraph in two sentences for a ten-year-old reader. " * 2
    cands = [f"Answer {i}: " + " ".join(f"word{k * (i + 1)}" for k in range(30 + 8 * i)) for i in range(8)]
    prompts = [judge.render(query, cands[i], cands[j]) for i in range(8) for j in range(8) if i != j]
    sampling = dataclasses.replace(BASE, max_new_tokens=4, max_slots=32)
    kw = dict(return_stats=True, prefill_chunk=128)  # prefixes are shared in whole chunks
    shared, on = generate(model, prompts, sampling, **kw)
    alone, off = generate(model, prompts, sampling, share_prefixes=False, **kw)
    assert [c.token_ids for c in shared] == [c.token_ids for c in alone]
    assert off.prefix_tokens == 0 and on.prefix_tokens > 0
    assert on.prefill_positions <= 0.6 * off.prefill_positions, (on.prefill_positions, off.prefill_positions)


def test_shared_prefixes_give_the_same_samples_as_computed_ones(model):
    """Prompts that open alike (a query and a first response, as a tournament's do): the copied prefix changes no
    sample (sampled, not only greedy), whether its source row has finished its prompt or is still building it."""
    head = "Which answer is better? " * 6  # 144 tokens: one whole 128-token chunk in common
    prompts = [head + tail for tail in ("first answer", "second", "a third one, longer", "4")] * 2
    sampling = dataclasses.replace(SETTINGS[2], max_new_tokens=6, max_slots=4)
    kw = dict(return_stats=True, prefill_chunk=128)
    shared, on = generate(model, prompts, sampling, **kw)
    alone, off = generate(model, prompts, sampling, share_prefixes=False, **kw)
    assert [c.token_ids for c in shared] == [c.token_ids for c in alone]
    assert on.prefix_tokens >= 128 * 7 and on.prefill_positions < off.prefill_positions


def test_after_warmup_no_request_waits_for_a_compile_and_outputs_are_unchanged(model):
    """A server's first request of each size compiled a program (4-20 s each on the bench's tiny judge, minutes on
    a real one). After ``warmup`` every arrival pattern - one request, several of mixed lengths, long prompts,
    requests joining mid-run, shared prefixes - runs without a compile, and the scratch state leaves no trace."""
    long = "a long prompt that fills more than one prefill chunk " * 3  # 159 tokens: two chunks
    rounds = [[PROMPTS[0]], PROMPTS, [long, long + "?", PROMPTS[1]], [PROMPTS[2]] * 3]
    configs = [BASE, *SETTINGS[1:] * 2]

    def serve(eng):
        out = []
        for prompts in rounds:
            first = eng.submit(prompts[0], BASE)
            eng.step()
            late = [eng.submit(p, c) for p, c in zip(prompts[1:], configs[1:])]  # they join the running batch
            eng.run()
            out.append([_got(r) for r in [first, *late]])
        return out

    # the reference: an engine of other shapes (its programs are not the warm one's), compiling as it goes; samples
    # do not depend on batch composition or slot placement
    limits = dict(batch_multiple=1, prompt_len=161, max_new=12, n_stops=1, prefill_chunk=128)
    other = plan(requests=8, max_slots=8, **limits)
    want = serve(Engine(model, other, BASE, chunk_steps=4))
    shapes = plan(requests=4, max_slots=4, **limits)
    eng = Engine(model, shapes, BASE, chunk_steps=4)
    assert eng.warmup() == len(eng.programs()) + 1
    assert {k for k, _, _ in eng.programs()} == {"decode", "prefill"}
    lowered = []  # every program jax lowers from here on (a compile, or a compilation-cache lookup)

    def listen(event, secs, **kw):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(kw.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        assert serve(eng) == want
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert eng.stats.prefix_tokens > 0  # the repeated prompts shared their prefixes
    assert lowered == []
