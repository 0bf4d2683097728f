"""``rrm-jax generate``: sample completions from a checkpoint, hub id or preset on the command line."""

from __future__ import annotations

import argparse
import sys

import jax.numpy as jnp

from rrm_jax.core import api
from rrm_jax.core.config import ConfigError
from rrm_jax.core.hf_io import CheckpointError
from rrm_jax.sampler.scheduler import SamplingConfig, generate


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rrm-jax generate", description="sample completions from a model")
    ap.add_argument(
        "--model",
        required=True,
        help="HF checkpoint directory or hub id (org/name[@rev]), or a models/*.toml preset / path (random init)",
    )
    ap.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="prompt text (repeatable); token ids 'ids:1,2,3' or, without a tokenizer, '1 2 3'",
    )
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--min-p", type=float, default=0.0)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-think-tokens", type=int, default=None)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--max-slots", type=int, default=32)
    args = ap.parse_args(argv)
    for p in args.prompt:  # before the model loads
        try:  # argv bytes that are not UTF-8 arrive as lone surrogates (Python's surrogateescape)
            p.encode("utf-8")
        except UnicodeEncodeError as e:
            byte = ord(p[e.start]) - 0xDC00 if 0xDC80 <= ord(p[e.start]) <= 0xDCFF else None
            what = f"byte 0x{byte:02x}" if byte is not None else repr(p[e.start])
            print(f"rrm-jax generate: --prompt: not UTF-8 text ({what} at character {e.start})", file=sys.stderr)
            return 2
    try:
        model = api.load_or_init(args.model, dtype=jnp.dtype(args.dtype))
    except (ConfigError, CheckpointError) as e:
        print(f"rrm-jax generate: {e}", file=sys.stderr)
        return 2
    prompts = []
    for p in args.prompt:
        if p.startswith("ids:") or model.tokenizer is None:
            try:
                prompts.append([int(x) for x in p.removeprefix("ids:").replace(",", " ").split()])
            except ValueError:
                why = (
                    "'ids:' takes integer token ids separated by commas or spaces"
                    if p.startswith("ids:")
                    else "the model has no tokenizer; pass token ids like '1 2 3'"
                )
                print(f"rrm-jax generate: --prompt {p!r}: {why}", file=sys.stderr)
                return 2
        else:
            prompts.append(p)
    try:
        cfg = SamplingConfig(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            n=args.n,
            seed=args.seed,
            max_think_tokens=args.max_think_tokens,
            stop_strings=tuple(args.stop),
            max_slots=args.max_slots,
        )
        outs = generate(model, prompts, cfg, progress=True)
    except ValueError as e:
        print(f"rrm-jax generate: {e}", file=sys.stderr)
        return 2
    for c in outs:
        print(f"--- prompt {c.prompt_index} sample {c.sample_index} ({c.num_tokens} tokens, {c.finish_reason})")
        print(c.text if model.tokenizer is not None else " ".join(map(str, c.token_ids)))
    return 0
