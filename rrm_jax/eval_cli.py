"""Command lines `rrm-jax eval | judge | rank` and their typed configs (TOML recipes in eval/*.toml).

Every config field is also a flag (``--max-think-tokens 512,1024``) and a ``key=value`` override; the
order of precedence is defaults < recipe TOML < flags < key=value. The resolved config is saved beside
the outputs (``config.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from . import shipped


@dataclasses.dataclass(frozen=True)
class JudgeOptions:
    """How to load the model and sample its judgements."""

    model: str = ""                       # checkpoint dir (HF layout) or a preset name (random weights)
    tokenizer: str = ""                   # tokenizer dir when the model has none (presets)
    dtype: str = "bfloat16"
    mesh: str = ""                        # "data,fsdp,tensor" sizes, e.g. "1,1,8"; empty = all devices data-parallel
    distributed: bool = False             # one process per host (rrm_jax.distributed); only process 0 writes
    prompt: str = "rrm-v1"
    max_new_tokens: int = 8192            # the released models' evaluation setting
    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0
    max_slots: int = 32                   # continuous-batching rows
    max_prompt_tokens: int = 0            # 0 = no limit; longer inputs are cut in the middle (reported per item)
    seed: int = 0
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig(JudgeOptions):
    dataset: str = "pandalm"              # rewardbench | pandalm | llmbar | jsonl
    data: str = ""                        # source file/dir; empty for rewardbench = download (internet)
    data_dir: str = ""                    # TFDS ArrayRecord cache (default ~/.cache/rrm_jax/tfds)
    split: str = "test"                   # TFDS split, slicing allowed: "test[:100]"
    out: str = "runs/eval"
    votes: tuple[int, ...] = (1,)
    max_think_tokens: tuple[int | None, ...] = (None,)   # one records file per (votes, budget)
    swap: str = "random"
    adaptive: bool = False
    max_items: int = 0                    # 0 = all
    batch_size: int = 64                  # pairs per compare_many call
    on_bad: str = "raise"                 # raise | skip (skipped items are listed in problems.json)
    plots: bool = True


@dataclasses.dataclass(frozen=True)
class JudgeConfig(JudgeOptions):
    pairs: str = ""                       # JSONL of {query, response_a, response_b, [label], [id]}
    out: str = "judgements.jsonl"
    votes: int = 1
    max_think_tokens: int | None = None
    swap: str = "random"
    adaptive: bool = False
    batch_size: int = 64
    on_bad: str = "raise"


@dataclasses.dataclass(frozen=True)
class RankConfig(JudgeOptions):
    queries: str = ""                     # JSONL of {query, candidates: [...], [id]}
    out: str = "rankings.jsonl"
    strategy: str = "knockout"            # knockout | elo
    votes: int = 1
    max_think_tokens: int | None = None
    swap: str = "random"


HELP = {
    "model": "checkpoint dir (HF safetensors), model TOML or preset name (random weights)",
    "tokenizer": "tokenizer dir, for models without one",
    "mesh": "device mesh data,fsdp,tensor, e.g. 1,1,8 (empty: all devices data-parallel)",
    "distributed": "multi-host: run the same command on every host (rrm_jax.distributed); process 0 writes",
    "prompt": "judge prompt key (rrm-v1)",
    "max_slots": "rows decoded at once (continuous batching)",
    "max_prompt_tokens": "cut longer comparisons in the middle of the longest texts (0: no limit)",
    "dataset": "rewardbench | pandalm | llmbar | jsonl",
    "data": "source file or directory (rewardbench: empty = download)",
    "data_dir": "TFDS ArrayRecord cache dir",
    "split": "TFDS split with optional slicing, e.g. test[:100]",
    "votes": "comma-separated vote counts; one run per value",
    "max_think_tokens": "comma-separated thinking budgets (none = no budget); one run per value",
    "swap": "random (one seeded order per pair) | both | none",
    "adaptive": "stop voting once the majority is settled",
    "max_items": "judge only the first N items (0: all)",
    "batch_size": "pairs per compare_many call (records are flushed after each)",
    "on_bad": "raise | skip (skipped items are listed)",
    "pairs": "JSONL of {query, response_a, response_b, [label], [id]}",
    "queries": "JSONL of {query, candidates: [...], [id]}",
    "strategy": "knockout | elo",
}


def validate(cfg) -> None:
    """Reject impossible settings before any work starts."""
    from rrm_jax.data.records import KINDS

    def bad(msg):
        raise SystemExit(f"rrm-jax: {msg}")

    if getattr(cfg, "swap", "random") not in ("random", "both", "none"):
        bad(f"swap must be random, both or none, got {cfg.swap!r}")
    if getattr(cfg, "on_bad", "raise") not in ("raise", "skip"):
        bad(f"on_bad must be raise or skip, got {cfg.on_bad!r}")
    if getattr(cfg, "dataset", "jsonl") not in KINDS:
        bad(f"dataset must be one of {', '.join(KINDS)}, got {cfg.dataset!r}")
    votes = cfg.votes if isinstance(cfg.votes, tuple) else (cfg.votes,)
    if not votes or min(votes) < 1:
        bad(f"votes must be >= 1, got {cfg.votes!r}")
    budgets = cfg.max_think_tokens if isinstance(cfg.max_think_tokens, tuple) else (cfg.max_think_tokens,)
    if not budgets or any(b is not None and b < 1 for b in budgets):
        bad(f"max_think_tokens must be >= 1 or none, got {cfg.max_think_tokens!r}")
    if getattr(cfg, "batch_size", 1) < 1:
        bad(f"batch_size must be >= 1, got {cfg.batch_size}")


# ---------------------------------------------------------------------------------------------- parsing
def _convert(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, name)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_convert(args[0], v, name) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    try:
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return tp(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {tp.__name__}, got {value!r}") from None


def _metavar(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return _metavar(typing.get_args(tp)[0]) + ",..."
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return "|".join(_metavar(a) for a in typing.get_args(tp) if a is not type(None)) + "|none"
    return {int: "INT", float: "FLOAT", bool: "true|false", str: "STR"}.get(tp, "VALUE")


def build_config(cls, argv: list[str], prog: str, description: str, origins: dict[str, str] | None = None):
    """defaults < recipe.toml (a positional *.toml or shipped recipe name) < --flags < key=value.

    ``origins``, when given, receives field -> recipe file for the values that came from a recipe."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("rest", nargs="*", help="an optional recipe .toml, then key=value overrides")
    for name in fields:
        ap.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=_metavar(hints[name]),
                        help=f"{HELP.get(name, '')} (default {fields[name].default!r})".strip())
    ns = ap.parse_intermixed_args(argv)
    values: dict[str, Any] = {}
    overrides: list[str] = []
    origin: dict[str, str] = {}
    for item in ns.rest:
        recipe = shipped.find(item, "eval") if "=" not in item else None
        if recipe is None and item.endswith(".toml") and "=" not in item:
            raise SystemExit(f"{prog}: recipe {item}: no such file (shipped recipes: {', '.join(shipped.names('eval'))})")
        if recipe is not None:
            try:
                with open(recipe, "rb") as f:
                    data = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise SystemExit(f"{prog}: cannot read recipe {recipe}: {e}")
            for k, v in data.items():
                if k not in fields:
                    raise SystemExit(f"{prog}: {recipe}: unknown key {k!r} (known: {', '.join(fields)})")
                values[k] = v
                origin[k] = str(recipe)
        elif "=" in item:
            overrides.append(item)
        else:
            raise SystemExit(f"{prog}: unexpected argument {item!r} (expected a .toml recipe or key=value)")
    values.update({k: v for k, v in vars(ns).items() if k in fields and v is not None})
    for item in overrides:
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in fields:
            raise SystemExit(f"{prog}: unknown key {k!r} in {item!r} (known: {', '.join(fields)})")
        values[k] = v
    overridden = {item.split("=", 1)[0].strip().replace("-", "_") for item in overrides}
    origin = {k: v for k, v in origin.items() if k not in overridden and getattr(ns, k, None) is None}
    try:
        cfg = cls(**{k: _convert(hints[k], v, k) for k, v in values.items()})
    except ValueError as e:
        raise SystemExit(f"{prog}: {e}")
    if origins is not None:
        origins.update(origin)
    return cfg


# where to get each dataset when a recipe's path (e.g. ../shared/..., the development checkout's) is absent
DATA_HINTS = {
    "pandalm": "the PandaLM test set: data/testset-v1.json of github WeOpenML/PandaLM",
    "llmbar": "a directory of LLMBar .json files: Dataset/LLMBar of github princeton-nlp/LLMBar",
    "rewardbench": "a RewardBench filtered-split .parquet/.json file, or an empty data= to download it",
    "jsonl": "a JSONL of {query, response_a, response_b, label}",
}


def check_data(cfg, prog: str, origin: dict[str, str]) -> None:
    """A dataset path must exist before anything heavy starts; the message says what to pass instead."""
    value = getattr(cfg, "data", "")
    if value and not Path(value).exists():
        what = DATA_HINTS.get(getattr(cfg, "dataset", "jsonl"), "the dataset")
        raise SystemExit(f"{prog}: {shipped.missing_input('data', value, what, origin.get('data', ''))}")


# ---------------------------------------------------------------------------------------------- model + judge
def load_model(opts: JudgeOptions):
    import jax.numpy as jnp
    import numpy as np

    import rrm_jax
    from rrm_jax.api import load_or_init, load_tokenizer

    if not opts.model:
        raise SystemExit("--model is required (a checkpoint directory, a model TOML or a preset name)")
    mesh = None
    if opts.mesh:
        import jax

        shape = tuple(int(x) for x in opts.mesh.split(","))
        if len(shape) != 3:
            raise SystemExit(f"--mesh expects three sizes data,fsdp,tensor, got {opts.mesh!r}")
        mesh = rrm_jax.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])
    model = load_or_init(opts.model, seed=opts.seed, mesh=mesh, dtype=jnp.dtype(opts.dtype))
    if model.tokenizer is None and opts.tokenizer:
        model = dataclasses.replace(model, tokenizer=load_tokenizer(opts.tokenizer))
    return model


def make_judge(model, opts: JudgeOptions, max_think_tokens: int | None):
    from rrm_jax.judge import Judge
    from rrm_jax.sampler import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature, top_p=opts.top_p,
                              top_k=opts.top_k, max_slots=opts.max_slots, seed=opts.seed,
                              max_think_tokens=max_think_tokens)
    return Judge(model, prompt=opts.prompt, sampling=sampling, max_prompt_tokens=opts.max_prompt_tokens or None)


def _join(opts: JudgeOptions) -> bool:
    """Join the multi-host run when asked (before any JAX work); returns whether this process writes outputs."""
    from rrm_jax.distributed import initialize, is_main

    if opts.distributed:
        initialize()
    return is_main()


def _save_config(cfg, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))


# ---------------------------------------------------------------------------------------------- commands
def eval_main(argv: list[str], *, judge_factory=None) -> int:
    """`rrm-jax eval`: every (votes, budget) setting -> records-<setting>.jsonl, then summary + plots.

    ``judge_factory(max_think_tokens) -> judge`` replaces model loading (tests pass a fake judge)."""
    from rrm_jax.data import DataError
    from rrm_jax.data.pipeline import load_pairs
    from rrm_jax.evaluate import EvalError, Setting, evaluate, load_records, write_summary

    origins: dict[str, str] = {}
    cfg = build_config(EvalConfig, argv, "rrm-jax eval", "evaluate a judge on RewardBench / PandaLM / LLMBar / JSONL",
                       origins)
    validate(cfg)
    check_data(cfg, "rrm-jax eval", origins)
    if judge_factory is None and not cfg.model:
        raise SystemExit("rrm-jax eval: --model is required (a checkpoint directory, a model TOML or a preset name)")
    main = _join(cfg)
    out = Path(cfg.out)
    try:
        pairs = load_pairs(cfg.dataset, cfg.data or None, data_dir=cfg.data_dir or None, on_bad=cfg.on_bad,
                           split=cfg.split)
    except (DataError, ValueError) as e:
        print(f"rrm-jax eval: {e}", file=sys.stderr)
        return 2
    if main:
        _save_config(cfg, out / "config.json")
        (out / "problems.json").write_text(json.dumps({"skipped": [str(p) for p in pairs.problems],
                                                       "notes": [str(p) for p in pairs.notes]}, indent=1))
    if pairs.problems and main:
        print(f"skipped {len(pairs.problems)} bad items (listed in {out / 'problems.json'})", file=sys.stderr)
    if judge_factory is None:
        model = load_model(cfg)
        judge_factory = lambda budget: make_judge(model, cfg, budget)  # noqa: E731
    summaries = []
    try:
        for budget in cfg.max_think_tokens:
            judge = judge_factory(budget)
            for votes in cfg.votes:
                summaries.append(evaluate(judge, pairs, out, votes=votes, swap=cfg.swap, seed=cfg.seed,
                                          max_items=cfg.max_items, batch_size=cfg.batch_size, adaptive=cfg.adaptive,
                                          kind=cfg.dataset, setting=Setting(votes, budget), progress=cfg.progress,
                                          extra_meta={"model": cfg.model or None}))
    except (EvalError, DataError) as e:
        print(f"rrm-jax eval: {e}", file=sys.stderr)
        return 2
    if not main:
        return 0
    # the records files may also hold rows beyond this run's max_items (an earlier, larger run)
    n = {s["setting"]: s["n"] for s in summaries}
    records = {k: [r for r in v if r["row"] < n[k]] for k, v in load_records(out).items() if k in n}
    write_summary(out, summaries, plots=cfg.plots, records=records)
    print((out / "summary.md").read_text())
    return 0


def judge_main(argv: list[str], *, judge=None) -> int:
    """`rrm-jax judge`: records for a JSONL of pairs (resumable); accuracy when the pairs carry labels."""
    from rrm_jax.data import DataError, read_pairs_jsonl
    from rrm_jax.evaluate import EvalError, run_records, summarize

    cfg = build_config(JudgeConfig, argv, "rrm-jax judge", "judge a JSONL of pairs")
    validate(cfg)
    if not cfg.pairs:
        raise SystemExit("rrm-jax judge: --pairs FILE.jsonl is required")
    main = _join(cfg)
    try:
        pairs = read_pairs_jsonl(cfg.pairs, on_bad=cfg.on_bad, require_label=False)
    except DataError as e:
        print(f"rrm-jax judge: {e}", file=sys.stderr)
        return 2
    for p in pairs.problems if main else ():
        print(f"skipped: {p}", file=sys.stderr)
    judge = judge or make_judge(load_model(cfg), cfg, cfg.max_think_tokens)
    try:
        recs = run_records(judge, pairs.records, cfg.out, meta={"dataset": "jsonl", "source": cfg.pairs,
                           "model": cfg.model or None, "max_think_tokens": cfg.max_think_tokens,
                           "prompt": cfg.prompt},
                           votes=cfg.votes, swap=cfg.swap, seed=cfg.seed, batch_size=cfg.batch_size,
                           adaptive=cfg.adaptive, progress=cfg.progress)
    except (EvalError, DataError) as e:
        print(f"rrm-jax judge: {e}", file=sys.stderr)
        return 2
    if not main:
        return 0
    s = summarize(recs)
    msg = f"{len(recs)} comparisons -> {cfg.out}; {s['no_verdict']} without a verdict"
    if s["n_scored"]:
        msg += f"; accuracy {100 * s['accuracy']:.1f}% on {s['n_scored']} labelled pairs"
    print(msg)
    return 0


def rank_main(argv: list[str], *, judge=None) -> int:
    """`rrm-jax rank`: a tournament per query; one JSONL line per query (resumable by id)."""
    from rrm_jax.data import DataError
    from rrm_jax.evaluate import RecordsFile
    from rrm_jax.progress import Progress

    cfg = build_config(RankConfig, argv, "rrm-jax rank", "rank candidates per query with a tournament")
    validate(cfg)
    if not cfg.queries:
        raise SystemExit("rrm-jax rank: --queries FILE.jsonl is required")
    if cfg.strategy not in ("knockout", "elo"):
        raise SystemExit(f"rrm-jax rank: --strategy must be knockout or elo, got {cfg.strategy!r}")
    main = _join(cfg)
    try:
        queries = read_queries(cfg.queries)
    except DataError as e:
        print(f"rrm-jax rank: {e}", file=sys.stderr)
        return 2
    judge = judge or make_judge(load_model(cfg), cfg, cfg.max_think_tokens)
    rf = RecordsFile(cfg.out)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    done = {r["id"] for r in rf.load(repair=main)}
    todo = [q for q in queries if q["id"] not in done]
    with Progress(f"ranking ({cfg.strategy})", len(queries), completed=len(queries) - len(todo), rate="queries",
                  fmt="{tokens} judge tokens", enabled=cfg.progress and main) as bar:
        tokens = 0
        for q in todo:
            r = judge.rank(q["query"], q["candidates"], strategy=cfg.strategy, votes=cfg.votes, seed=cfg.seed,
                           swap=cfg.swap)
            rec = {"id": q["id"], "query": q["query"], "strategy": cfg.strategy, "votes": cfg.votes,
                   "best": int(r.order[0]), "best_candidate": q["candidates"][r.order[0]], **r.to_dict()}
            if main:  # multi-host: every process plays every match, one writes
                rf.append([rec])
            tokens += int(r.tokens)
            bar.update(advance=1, tokens=tokens)
    if main:
        print(f"{len(queries)} queries ranked -> {cfg.out}")
    return 0


def read_queries(path: str | Path) -> list[dict]:
    """JSONL of {query, candidates: [>= 2 strings], [id]} with file:line:field errors."""
    from rrm_jax.data import DataError

    out, seen = [], set()
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: malformed JSON ({e.msg})") from None
            if not isinstance(item, dict):
                raise DataError(f"{p}:{n}: expected a JSON object")
            if not isinstance(item.get("query"), str) or not item["query"].strip():
                raise DataError(f"{p}:{n}:query: missing or empty")
            c = item.get("candidates")
            if not isinstance(c, list) or len(c) < 2 or not all(isinstance(x, str) for x in c):
                raise DataError(f"{p}:{n}:candidates: expected a list of >= 2 strings")
            qid = str(item.get("id", f"{p.stem}-{n}"))
            if qid in seen:
                raise DataError(f"{p}:{n}:id: duplicate id {qid!r}")
            seen.add(qid)
            out.append({"id": qid, "query": item["query"], "candidates": c})
    return out
