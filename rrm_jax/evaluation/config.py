"""The typed configs of `rrm-jax eval | judge | rank` (TOML recipes in eval/*.toml) and their command-line parsing.

Every config field is also a flag (``--max-think-tokens 512,1024``) and a ``key=value`` override; the
order of precedence is defaults < recipe TOML < flags < key=value. The resolved config is saved beside
the outputs (``config.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from rrm_jax.core import shipped
from rrm_jax.data.records import KINDS


@dataclasses.dataclass(frozen=True)
class JudgeOptions:
    """How to load the model and sample its judgements."""

    model: str = ""                       # checkpoint dir (HF layout) or a preset name (random weights)
    tokenizer: str = ""                   # tokenizer dir when the model has none (presets)
    dtype: str = "bfloat16"
    mesh: str = ""                        # "data,fsdp,tensor" sizes, e.g. "1,1,8"; empty = all devices data-parallel
    distributed: bool = False             # one process per host (rrm_jax.core.distributed); only process 0 writes
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
    "distributed": "multi-host: run the same command on every host (rrm_jax.core.distributed); process 0 writes",
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
