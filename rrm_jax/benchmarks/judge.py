"""`rrm-jax bench judge`: what batching, tournaments and adaptive voting buy a judge, measured side by side.

1. model: comparisons/s and tokens/s of `Judge.compare_many` (all pairs through one continuous-batching
   `generate` call) vs judging the same pairs one `compare` at a time, on a random Qwen2.5-0.5B-shaped model with
   the R1-distill tokenizer. A thinking budget forces every sample to a verdict, so both paths generate exactly
   the same number of tokens.
2. tournament: comparisons needed by a knockout vs an ELO round-robin for n = 8, 16, 32, and how often each
   picks the truly best candidate under a simulated Bradley-Terry judge.
3. adaptive: samples (compute) saved by adaptive voting on a simulated judge of per-sample accuracy p, run
   through the real `Judge` logic with a simulated sampler; winners are checked identical to full voting.
4. workload (not in the default parts): the judge's real workload, RRM prompts of PandaLM pairs, against
   transformers on the same weights (`rrm_jax.benchmarks.judge_workload`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2].parent / "shared" / "tokenizers" / "deepseek-r1-distill-qwen"
WORDS = (
    "the model answer reasons about each step carefully and checks the result against the question then "
    "explains why this is correct with an example of how it works in practice for most cases"
).split()


def synthetic_pairs(n: int, seed: int = 0, max_words: int = 60) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(seed)

    def text(k):
        return " ".join(rng.choice(WORDS, size=k)).capitalize() + "."

    return [
        (
            f"Question {i}: " + text(int(rng.integers(8, 20))),
            text(int(rng.integers(5, max_words))),
            text(int(rng.integers(5, max_words))),
        )
        for i in range(n)
    ]


# ----------------------------------------------------------------------------------------------- part 1
def bench_model(args) -> None:
    import jax

    import rrm_jax
    from rrm_jax.core.config import resolve_config
    from rrm_jax.core.tokenizers import load_tokenizer
    from rrm_jax.judge.judge import Judge
    from rrm_jax.sampler import SamplingConfig

    tok_path = Path(args.tokenizer)
    if not tok_path.is_dir():
        raise SystemExit(f"--tokenizer {tok_path} does not exist (the R1-distill tokenizer lives in ../shared)")
    tok = load_tokenizer(tok_path)
    cfg = resolve_config(args.model)
    over = dict(vocab_size=max(cfg.vocab_size, len(tok)), eos_token_id=tok.eos_token_id)
    if args.layers:
        over["num_layers"] = args.layers
    cfg = dataclasses.replace(cfg, **over)
    mesh = rrm_jax.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    import jax.numpy as jnp

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    model = rrm_jax.init(cfg, seed=0, mesh=mesh, tokenizer=tok, dtype=dtype)
    sampling = SamplingConfig(
        max_new_tokens=args.new_tokens, max_think_tokens=args.think, temperature=0.6, max_slots=args.slots
    )
    judge = Judge(model, sampling=sampling)
    pairs = synthetic_pairs(args.pairs, seed=1)
    prompt_tokens = [len(tok.encode(judge.render(*p), add_special_tokens=False)) for p in pairs]
    print(
        f"[model] {args.model} L={cfg.num_layers} D={cfg.hidden_size} V={cfg.vocab_size} {args.dtype} on "
        f"{jax.devices()[0].device_kind}; {args.pairs} pairs x {args.votes} votes, prompts {min(prompt_tokens)}-"
        f"{max(prompt_tokens)} tokens, think budget {args.think}, max_new_tokens {args.new_tokens}, "
        f"slots {args.slots}"
    )

    def run_batched():
        return judge.compare_many(pairs, votes=args.votes, seed=0)

    def run_single():
        return [judge.compare(*p, votes=args.votes, seed=0) for p in pairs]

    results = {}
    for name, fn in (("compare_many", run_batched), ("one at a time", run_single)):
        t0 = time.perf_counter()
        fn()  # compile + warm
        warm = time.perf_counter() - t0
        best = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            vs = fn()
            best = min(best, time.perf_counter() - t0)
        toks = sum(v.tokens for v in vs)
        assert all(v.forced == v.samples_drawn for v in vs) or args.think is None
        results[name] = (best, toks)
        print(
            f"[model] {name:14s}: {len(pairs) / best:7.3f} comparisons/s  {toks / best:8.1f} tokens/s  "
            f"({best:.2f} s, {toks} generated tokens, first call incl. compile {warm:.1f} s)"
        )
    (tb, kb), (ts, ks) = results["compare_many"], results["one at a time"]
    print(f"[model] compare_many / one-at-a-time throughput = {(kb / tb) / (ks / ts):.2f}x")


# ----------------------------------------------------------------------------------------------- simulated judges
class _SimJudge:
    def __init__(self, quality, seed):
        self.q, self.rng = np.asarray(quality, float), np.random.default_rng(seed)

    def __call__(self, items):
        from rrm_jax.judge.verdict import Verdict

        out = []
        for _, a, b in items:
            pa = 1 / (1 + math.exp(self.q[int(b[1:])] - self.q[int(a[1:])]))
            w = int(self.rng.random() >= pa)
            out.append(Verdict(w, int(w == 0), int(w == 1), 0, pa, samples_drawn=1))
        return out


def bench_tournament(args) -> None:
    from rrm_jax.judge.tournament import knockout, round_robin

    print(
        f"[tournament] simulated Bradley-Terry judge, qualities evenly spaced over {args.spread} log-odds; "
        f"{args.trials} trials each"
    )
    print("[tournament]  n | knockout comps | P(best) | ELO comps | P(best) | ELO both orders comps | P(best)")
    for n in (8, 16, 32):
        quality = np.linspace(0, args.spread, n)
        cands = [f"c{k}" for k in range(n)]
        row = []
        for fn, kw in ((knockout, {}), (round_robin, {}), (round_robin, {"both_orders": True})):
            hits, comps = 0, set()
            for t in range(args.trials):
                r = fn(_SimJudge(quality, 10_000 * n + t), "Q", cands, seed=t, **kw)
                hits += r.order[0] == n - 1
                comps.add(r.comparisons)
            row += [comps.pop() if len(comps) == 1 else comps, hits / args.trials]
        print(
            f"[tournament] {n:2d} | {row[0]:14d} | {row[1]:7.3f} | {row[2]:9d} | {row[3]:7.3f} | "
            f"{row[4]:21d} | {row[5]:7.3f}"
        )


class _CharTok:
    chat_template = "plain"
    eos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [ord(c) + 1 for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i - 1) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def bench_adaptive(args) -> None:
    from rrm_jax.judge.judge import Judge
    from rrm_jax.sampler import Completion, SamplingConfig

    tok = _CharTok()

    def make_generate(p, seed):
        draws = {}

        def generate(model, prompts, cfg, progress=False):
            out = []
            for pi, prompt in enumerate(prompts):
                item = int(prompt.split("## Query\n\nitem ", 1)[1].split("\n", 1)[0])
                gold_first = "GOLD" in prompt.split("### Assistant 2", 1)[0]
                for s in range(cfg.n):
                    k = draws.get(prompt, 0)
                    draws[prompt] = k + 1
                    # The k-th draw of an item is fixed by (seed, item, k): full and adaptive voting see the
                    # same samples, so their majorities must agree.
                    correct = np.random.default_rng([seed, item, k]).random() < p
                    digit = "1" if correct == gold_first else "2"
                    ids = tok.encode("thinking " * 50 + "</think>\n\n\\boxed{Assistant " + digit + "}")
                    out.append(Completion(pi, s, ids, tok.decode(ids), np.zeros(len(ids)), "stop", len(ids)))
            return out

        return generate

    class M:
        tokenizer = tok

    items = [(f"item {i}", "GOLD answer", "other answer") for i in range(args.items)]
    print(
        f"[adaptive] simulated sampler, per-sample accuracy p, {args.items} comparisons; saved = 1 - drawn / "
        f"(votes x comparisons); one generate call per voting round"
    )
    print("[adaptive]  p   | votes | drawn/comparison | saved | rounds | winners identical to full voting")
    for p in args.accuracies:
        for votes in args.vote_counts:
            res = {}
            for adaptive in (False, True):
                gen = make_generate(p, 7)
                calls = []
                judge = Judge(M(), sampling=SamplingConfig(), generate=lambda *a, **k: calls.append(1) or gen(*a, **k))
                vs = judge.compare_many(items, votes=votes, swap="random", seed=3, adaptive=adaptive)
                res[adaptive] = (vs, len(calls))
            full, (ad, rounds) = res[False][0], res[True]
            same = np.mean([a.winner == f.winner for a, f in zip(ad, full)])
            drawn = sum(v.samples_drawn for v in ad) / len(ad)
            print(
                f"[adaptive] {p:4.2f} | {votes:5d} | {drawn:16.2f} | {1 - drawn / votes:5.1%} | {rounds:6d} | "
                f"{same:.0%}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rrm-jax bench judge", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--parts", default="model,tournament,adaptive", help="comma list: model,tournament,adaptive,workload"
    )
    ap.add_argument("--model", default="qwen2.5-0.5b", help="preset name or TOML (random weights)")
    ap.add_argument("--layers", type=int, default=None, help="override num_layers (shrinks the run)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--votes", type=int, default=1)
    ap.add_argument("--think", type=int, default=32, help="thinking budget (max_think_tokens)")
    ap.add_argument("--new-tokens", type=int, default=40, help="max_new_tokens")
    ap.add_argument("--slots", type=int, default=32, help="continuous-batching slots")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--trials", type=int, default=200, help="tournament trials per n")
    ap.add_argument("--spread", type=float, default=3.0, help="log-odds between worst and best candidate")
    ap.add_argument("--items", type=int, default=2000, help="comparisons for the adaptive-voting simulation")
    ap.add_argument("--accuracies", type=lambda s: [float(x) for x in s.split(",")], default=[0.7, 0.9])
    ap.add_argument("--vote-counts", type=lambda s: [int(x) for x in s.split(",")], default=[3, 5, 9, 16])
    ap.add_argument("--data", default=None, help="workload: PandaLM testset-v1.json (default: ../shared's)")
    ap.add_argument("--new", type=int, default=48, help="workload: new tokens per prompt")
    ap.add_argument(
        "--chunks",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[128],
        help="workload: prefill chunk sizes to time (one padded chunk per prompt is always added)",
    )
    ap.add_argument(
        "--dense",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=(4, 512),
        help="workload: batch,seq of the dense forward reference",
    )
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in ("model", "tournament", "adaptive", "workload")]
    if bad:
        ap.error(f"--parts: unknown part(s) {', '.join(bad)}")
    for p in parts:
        if p == "workload":
            from rrm_jax.benchmarks.judge_workload import DEFAULT_DATA, bench_workload

            args.data = args.data or str(DEFAULT_DATA)
            bench_workload(args)
            continue
        {"model": bench_model, "tournament": bench_tournament, "adaptive": bench_adaptive}[p](args)
    return 0
