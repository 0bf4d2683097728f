"""`rrm-jax bench device`'s workload sections: the judge's PandaLM workload against transformers on the same
device, and ``rrm-jax bench serve`` on it (:mod:`rrm_jax.benchmarks.device` runs them after the model sections)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from rrm_jax.core.api import init, save_hf
from rrm_jax.core.config import resolve_config
from rrm_jax.core.sharding import make_mesh
from rrm_jax.sampler import SamplingConfig, generate

BF16 = jnp.bfloat16


def _judge_workload(args, dev):
    """(model, prompt ids, where the prompts came from) for the judge's PandaLM workload on ``dev``."""
    from rrm_jax.benchmarks.judge_workload import random_model, workload_ids
    from rrm_jax.core.tokenizers import load_tokenizer

    dtype = BF16 if dev.platform != "cpu" else jnp.float32
    if Path(args.tokenizer).is_dir() and Path(args.data).is_file():
        tok = load_tokenizer(Path(args.tokenizer))
        ids = workload_ids(tok, args.judge_pairs, Path(args.data))
        model = random_model(args.model, tok, 0, dtype)
        return model, ids, f"PandaLM RRM prompts ({args.data}), the R1-distill tokenizer"
    # PandaLM's RRM prompts run ~300-1100 tokens with this tokenizer: random ids of such lengths
    cfg = resolve_config(args.model)
    rng = np.random.default_rng(0)
    lens = rng.integers(300, 1100, args.judge_pairs)
    ids = [rng.integers(10, cfg.vocab_size - 10, n).tolist() for n in lens]
    model = init(cfg, seed=0, mesh=make_mesh((1, 1, 1), devices=[dev]), dtype=dtype)
    return model, ids, "random ids of PandaLM prompt lengths (--tokenizer / --data not found)"


def sec_judge(args, dev, clock) -> dict:
    model, ids, source = _judge_workload(args, dev)
    new = args.judge_new
    sampling = SamplingConfig(max_new_tokens=new, temperature=0.0, add_eos_stop=False, max_slots=len(ids))
    generate(model, ids, sampling)  # compiles
    best = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        outs, st = generate(model, ids, sampling, return_stats=True)
        secs = time.perf_counter() - t0
        best = min(best or (secs, st, outs), (secs, st, outs), key=lambda x: x[0])
    secs, st, outs = best
    lens = [len(x) for x in ids]
    out = dict(
        model=args.model,
        prompts=source,
        rows=len(ids),
        prompt_tokens=[min(lens), max(lens), sum(lens)],
        new_tokens=new,
        dtype=str(jnp.dtype(model.module.compute_dtype)),
        rrm_jax_s=secs,
        rrm_jax_prefill_s=st.prefill_seconds,
        rrm_jax_decode_ms_per_step=1e3 * st.decode_seconds / max(st.decode_steps, 1),
    )
    try:
        import torch  # noqa: F401 (the peer's; PyPI has CPU wheels of it for Python 3.11 only)
    except ImportError:
        return dict(out, transformers="skipped: torch is not installed")
    hf_secs, hf_rows, peer = _transformers_generate(model, ids, new, dev)
    return dict(
        out,
        transformers_s=hf_secs,
        transformers=peer,
        speedup=hf_secs / secs,
        greedy_rows_identical=float(np.mean([o.token_ids == h for o, h in zip(outs, hf_rows)])),
    )


def _transformers_generate(model, ids, new: int, dev):
    """transformers ``generate`` (torch on ``dev``'s kind of device) on ``model``'s weights and the same ids,
    greedy, left-padded, one warm call first: (seconds, new token rows, what ran)."""
    import torch
    import transformers

    from rrm_jax.benchmarks.judge_workload import transformers_greedy

    device = "cuda" if dev.platform == "gpu" and torch.cuda.is_available() else "cpu"
    tdtype = torch.bfloat16 if jnp.dtype(model.module.compute_dtype) == BF16 else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model, tmp)
        ref = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=tdtype).to(device).eval()
    pad = (model.tokenizer.pad_token_id if model.tokenizer is not None else None) or 0
    rows, secs = transformers_greedy(ref, ids, new, pad, device)
    peer = f"{transformers.__version__} on torch {torch.__version__} ({device}, {ref.config._attn_implementation})"
    return secs, rows, peer


def sec_serve(args, dev, clock) -> dict:
    import importlib.util

    from rrm_jax.benchmarks import serve

    missing = [m for m in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        return dict(skipped=f"{', '.join(missing)} not installed (pip install 'rrm-jax[serve]' httpx)")
    for flag, path in (("--tokenizer", args.tokenizer), ("--data", args.data)):
        if not Path(path).exists():
            return dict(skipped=f"{flag} {path} not found: the serve bench replays PandaLM's RRM requests")
    dtype = "bfloat16" if dev.platform != "cpu" else "float32"
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "serve.json"
        argv = f"--model {args.model} --dtype {dtype} --clients {args.serve_clients} --requests {args.serve_requests}"
        argv += f" --think {args.judge_new} --peer none --json {rows} --tokenizer {args.tokenizer} --data {args.data}"
        argv += " --warmup false"  # the bench's own warm-up requests compile what it times, not every program
        serve.main(argv.split())
        return dict(model=args.model, dtype=dtype, think_tokens=args.judge_new, **json.loads(rows.read_text()))
