"""`rrm-jax bench prefix`: prefill positions of ELO round robins with and without prefix sharing, side by side.

An 8-candidate round robin in both orders renders 56 prompts that all open with the system prompt and the query,
and 7 per candidate that also show that candidate first. The engine copies a prefix another row holds instead
of computing it; this counts the prefill positions computed both ways (a count of work, not a timing: it does not
depend on the weights, so a random model with the given tokenizer's vocabulary measures it) and checks that the
greedy verdict tokens are identical.

Candidates come from a PandaLM test set (``--data testset-v1.json``: the distinct responses of one instruction,
topped up from the next instructions' when it has fewer than 8), else from built-in pairs of plain text.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json

import jax.numpy as jnp

from rrm_jax.core.api import init, resolve_config
from rrm_jax.core.tokenizers import byte_tokenizer, load_tokenizer
from rrm_jax.judge.judge import Judge
from rrm_jax.sampler import SamplingConfig, generate


def candidate_sets(path: str, robins: int, size: int) -> list[tuple[str, list[str]]]:
    if not path:
        words = "the quick brown fox jumps over a lazy dog while seven wizards box".split()
        return [
            (
                f"Question {k}: which text reads better?",
                [" ".join(words[(i + k) % 14 :] * (3 + i)) for i in range(size)],
            )
            for k in range(robins)
        ]
    by: dict[str, list[str]] = collections.defaultdict(list)
    for it in json.load(open(path)):
        q = it["instruction"] + ("\n" + it["input"] if it.get("input") else "")
        for r in (it["response1"], it["response2"]):
            if r not in by[q]:
                by[q].append(r)
    pool = [r for rs in by.values() for r in rs]
    out = []
    for k, (q, rs) in enumerate(sorted(by.items(), key=lambda x: -len(x[1]))[:robins]):
        extra = [r for r in pool[k * size : (k + 2) * size] if r not in rs]
        out.append((q, (rs + extra)[:size]))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rrm-jax bench prefix", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="", help="a PandaLM testset-v1.json (default: built-in texts)")
    ap.add_argument("--tokenizer", default="", help="tokenizer dir or hub id (default: the byte tokenizer)")
    ap.add_argument("--robins", type=int, default=4, help="round robins (queries)")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--max-slots", type=int, default=32)
    args = ap.parse_args(argv)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else byte_tokenizer()
    cfg = dataclasses.replace(resolve_config("tiny"), vocab_size=len(tok), max_position_embeddings=16384)
    judge = Judge(init(cfg, seed=0, dtype=jnp.float32, tokenizer=tok))
    n = args.candidates
    prompts = [
        judge.render(q, c[i], c[j])
        for q, c in candidate_sets(args.data, args.robins, n)
        for i in range(n)
        for j in range(n)
        if i != j
    ]
    sampling = SamplingConfig(max_new_tokens=1, temperature=0, max_slots=args.max_slots, add_eos_stop=False)
    print(f"{len(prompts)} prompts ({args.robins} round robins of {n}, both orders)")
    print(f"{'prefix sharing':<16}{'positions':>11}{'copied':>10}")
    rows = {}
    for share in (False, True):
        outs, st = generate(judge.model, prompts, sampling, return_stats=True, share_prefixes=share)
        rows[share] = (st, [c.token_ids for c in outs])
        print(f"{'on' if share else 'off':<16}{st.prefill_positions:>11}{st.prefix_tokens:>10}")
    (off, ref), (on, got) = rows[False], rows[True]
    print(
        f"computed with sharing / without: {on.prefill_positions / off.prefill_positions:.3f}; same outputs: {got == ref}"
    )
    return 0 if got == ref else 1
