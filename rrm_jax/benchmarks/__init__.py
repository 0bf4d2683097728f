"""`rrm-jax bench NAME`: side-by-side benchmarks that print ratios measured in one run (never timed tests)."""

from __future__ import annotations

import importlib
import sys

BENCHES = ("device", "forward", "generate", "judge", "prefix", "serve", "train")


def cli(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        asked = argv[:1] in (["-h"], ["--help"])  # asking for help is not an error
        if argv and not asked:
            print(f"rrm-jax bench: unknown benchmark {argv[0]!r}", file=sys.stderr)
        print(
            f"usage: rrm-jax bench {{{'|'.join(BENCHES)}}} [args]  (each takes --help)",
            file=sys.stdout if asked else sys.stderr,
        )
        return 0 if asked else 2
    from rrm_jax.core.progress import Progress

    # a bench prints its figures as it goes; off a terminal a heartbeat shows it is alive between them
    with Progress(f"bench {argv[0]}", None, bar=False):
        return importlib.import_module(f"rrm_jax.benchmarks.{argv[0]}").main(argv[1:]) or 0


def rates(b: int, t: int, new_tokens: int, pre: float, total: float) -> dict:
    """Rates of a B x T prompt batch from its prefill-only time (one new token) and its full time; every
    engine `bench generate` compares is timed this way."""
    dec = max(total - pre, 1e-9)
    return {
        "prefill_tok_s": b * t / pre,
        "decode_tok_s": b * (new_tokens - 1) / dec,
        "step_ms": 1e3 * dec / (new_tokens - 1),
        "e2e_tok_s": b * new_tokens / total,
    }
