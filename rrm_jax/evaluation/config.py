"""The typed configs of `rrm-jax eval | judge | rank` (TOML recipes in eval/*.toml) and their command-line parsing.

Every config field is also a flag (``--max-think-tokens 512,1024``) and a ``key=value`` override; the
order of precedence is defaults < recipe TOML < flags < key=value, all read by :mod:`rrm_jax.core.configs`
(bad input is a ConfigError naming the file or flag and the field). The resolved config is saved beside
the outputs (``config.toml``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from rrm_jax.core import configs, hub, shipped
from rrm_jax.core.errors import ConfigError
from rrm_jax.core.specs import model_spec
from rrm_jax.core.tokenizers import GENERATED
from rrm_jax.data.records import KINDS
from rrm_jax.judge.judge import SWAPS
from rrm_jax.judge.prompt import get_prompt
from rrm_jax.sampler.config import SamplingConfig


@dataclasses.dataclass(frozen=True)
class JudgeOptions:
    """How to load the model and sample its judgements."""

    model: str = ""  # checkpoint dir (HF layout) or a preset name (random weights)
    tokenizer: str = ""  # tokenizer dir when the model has none (presets)
    dtype: str = "bfloat16"
    mesh: tuple[int, ...] = ()  # (data, fsdp, tensor) sizes, e.g. 1,1,8; empty = all devices data-parallel
    distributed: bool = False  # one process per host (rrm_jax.core.distributed); only process 0 writes
    prompt: str = "rrm-v1"
    # [sampling], as training's [judge.sampling]: the released models' evaluation decoding. Its thinking budget
    # and seed are the command's (max_think_tokens, seed below: a budget sweep, one seed for orders and samples).
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=8192, temperature=0.6, top_p=1.0, max_slots=32)
    max_prompt_tokens: int = 0  # 0 = no limit; longer inputs are cut in the middle (reported per item)
    seed: int = 0
    progress: bool = True
    direct: bool = False  # the direct baseline: no thinking, verdict forced at once (budget 0)

    @staticmethod
    def upgrade(values: dict, source: str) -> dict:
        """Old spellings, for :func:`rrm_jax.core.configs.load`: the sampling keys moved from the top level to
        ``[sampling]`` (a warning names the new key)."""
        old = {k: v for k, v in values.items() if k in SAMPLING_FLAGS}
        if not old:
            return values
        sampling = dict(values.get("sampling") or {})
        for key, value in old.items():
            warnings.warn(f"{source}: {key} is deprecated; use sampling.{key}", DeprecationWarning, stacklevel=4)
            sampling.setdefault(key, value)
        return {**{k: v for k, v in values.items() if k not in old}, "sampling": sampling}


# [sampling] keys that keep a flag of their own (--max-new-tokens 512 is sampling.max_new_tokens=512)
SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_p", "top_k", "max_slots")


@dataclasses.dataclass(frozen=True)
class EvalConfig(JudgeOptions):
    dataset: str = "pandalm"  # rewardbench | pandalm | llmbar | judgebench | rmbench | jsonl
    data: str = ""  # source file/dir; empty for rewardbench = download (internet)
    data_dir: str = ""  # TFDS ArrayRecord cache (default ~/.cache/rrm_jax/tfds)
    split: str = "test"  # TFDS split, slicing allowed: "test[:100]"
    out: str = "runs/eval"
    votes: tuple[int, ...] = (1,)
    max_think_tokens: tuple[int | None, ...] = (None,)  # one records file per (votes, budget)
    swap: str = "random"
    adaptive: bool = False
    max_items: int = 0  # 0 = all
    batch_size: int = 64  # pairs per compare_many call
    on_bad: str = "raise"  # raise | skip (skipped items are listed in problems.json)
    plots: bool = True
    restart: bool = False  # move earlier records of --out aside (*.replaced-<n>) instead of resuming


@dataclasses.dataclass(frozen=True)
class JudgePairsConfig(JudgeOptions):
    """`rrm-jax judge`: verdicts on a JSONL of pairs (training's [judge], the judge that rewards a policy, is
    rrm_jax.training.config.JudgeConfig)."""

    pairs: str = ""  # JSONL of {query, response_a, response_b, [label], [id]}
    out: str = "judgements.jsonl"
    votes: int = 1
    max_think_tokens: int | None = None
    swap: str = "random"
    adaptive: bool = False
    batch_size: int = 64
    on_bad: str = "raise"
    restart: bool = False


@dataclasses.dataclass(frozen=True)
class RankConfig(JudgeOptions):
    queries: str = ""  # JSONL of {query, candidates: [...], [id]}
    out: str = "rankings.jsonl"
    strategy: str = "knockout"  # knockout | elo
    votes: int = 1
    max_think_tokens: int | None = None
    swap: str = "random"
    restart: bool = False


@dataclasses.dataclass(frozen=True)
class BonConfig(JudgeOptions):
    data: str = ""  # JSONL of {query, candidates, correct | answer} (or {query, answer} + policy)
    out: str = "runs/bon"
    strategy: tuple[str, ...] = ("knockout", "elo", "random", "majority", "oracle")
    n: tuple[int, ...] = (2, 4, 8, 16, 32)
    votes: int = 1
    extract: str = ""  # choice | math: answers pulled from the candidates ("" = none)
    max_think_tokens: int | None = None
    swap: str = "random"
    limit: int = 0  # 0 = every query
    batch_size: int = 8  # queries whose tournaments share compare_many calls (and a records flush)
    policy: str = ""  # generate the candidates with this model first (checkpoint/preset)
    policy_temperature: float = 1.0
    policy_max_new_tokens: int = 512
    plots: bool = True
    restart: bool = False
    protocol: str = "tournament"  # tournament: pick one of n | rrm-conflict-pairs: the RRM authors' PPE pairs
    rounds: int = 5  # rrm-conflict-pairs: correct-vs-incorrect pairs drawn per question
    runs: int = 1  # rrm-conflict-pairs: runs (seeds seed, seed + 1, ...), one verdict each, voted across


BON_STRATEGIES = ("knockout", "elo", "random", "majority", "oracle")

HELP = {
    "model": "checkpoint dir (HF safetensors), model TOML or preset name (random weights)",
    "tokenizer": "tokenizer dir, for models without one",
    "mesh": "device mesh data,fsdp,tensor, e.g. 1,1,8 (empty: all devices data-parallel)",
    "distributed": "multi-host: run the same command on every host (rrm_jax.core.distributed); process 0 writes",
    "prompt": "judge prompt key (rrm-v1)",
    "max_slots": "rows decoded at once (continuous batching)",
    "max_prompt_tokens": "cut longer comparisons in the middle of the longest texts (0: no limit)",
    "dataset": "rewardbench | pandalm | llmbar | judgebench | rmbench | jsonl",
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
    ("BonConfig", "strategy"): "comma-separated subset of " + ", ".join(BON_STRATEGIES),
    "protocol": "tournament (pick one of n) | rrm-conflict-pairs (the RRM authors' correct-vs-incorrect PPE pairs)",
    "rounds": "rrm-conflict-pairs: pairs drawn per question",
    "runs": "rrm-conflict-pairs: runs (one seed and one verdict each), voted across",
    "min_confidence": "rrm-jax label: keep only pairs with |2 soft - 1| >= this (0: every decided pair)",
    "direct": "the direct baseline: thinking budget 0, the verdict forced at once (replaces --max-think-tokens)",
    "n": "comma-separated numbers of candidates (the first n of each query); one result per value",
    "extract": "choice | math: extract final answers (for an 'answer' field and for majority)",
    "limit": "only the first N queries (0: all)",
    "policy": "generate the candidates with this policy model first (written to OUT/candidates.jsonl)",
    "policy_temperature": "the policy's sampling temperature",
    "policy_max_new_tokens": "the policy's generation length",
    "restart": "move earlier records of --out aside (<name>.replaced-<n>) and start over instead of resuming",
}


def validate(cfg) -> None:
    """Reject impossible settings before any work starts."""

    def bad(msg):
        raise ConfigError(msg)

    if getattr(cfg, "swap", "random") not in SWAPS:
        bad(f"swap must be random, both or none, got {cfg.swap!r}")
    if getattr(cfg, "on_bad", "raise") not in ("raise", "skip"):
        bad(f"on_bad must be raise or skip, got {cfg.on_bad!r}")
    if getattr(cfg, "dataset", "jsonl") not in KINDS:
        bad(f"dataset must be one of {', '.join(KINDS)}, got {cfg.dataset!r}")
    if getattr(cfg, "dataset", "") == "judgebench" and cfg.swap != "both":
        bad(
            f"dataset=judgebench judges every pair in both orders (its score nets the two): set swap=both, not {cfg.swap!r}"
        )
    votes = getattr(cfg, "votes", 1)  # a server takes votes (and a budget) per request
    if not (tally := votes if isinstance(votes, tuple) else (votes,)) or min(tally) < 1:
        bad(f"votes must be >= 1, got {votes!r}")
    think = getattr(cfg, "max_think_tokens", None)
    budgets = think if isinstance(think, tuple) else (think,)
    if not budgets or any(b is not None and b < 0 for b in budgets):
        bad(f"max_think_tokens must be >= 0 (0 = direct) or none, got {think!r}")
    if getattr(cfg, "batch_size", 1) < 1:
        bad(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.mesh and len(cfg.mesh) != 3:
        bad(f"mesh expects three sizes data,fsdp,tensor, got {cfg.mesh!r}")
    if getattr(cfg, "prompt", None) is not None:
        get_prompt(cfg.prompt)  # an unknown name is refused here, before the model loads
    if isinstance(cfg, BonConfig):
        _validate_bon(cfg, bad)
    elif getattr(cfg, "strategy", "knockout") not in ("knockout", "elo"):
        bad(f"--strategy must be knockout or elo, got {cfg.strategy!r}")
    if cfg.max_prompt_tokens < 0:
        bad(f"max_prompt_tokens must be >= 1 or 0 (no limit), got {cfg.max_prompt_tokens}")
    s = cfg.sampling
    if s.max_think_tokens is not None or s.n != 1:
        bad(
            f"sampling.max_think_tokens={s.max_think_tokens!r}, sampling.n={s.n}: the thinking budget and the votes "
            "are the command's own max_think_tokens and votes"
        )
    for budget in budgets:  # the sampling block's own checks (temperature, top_p, ...), before any loading
        try:
            sampling_config(cfg, budget)
        except ConfigError as e:  # name the flag, not the dataclass field
            bad(re.sub(r"SamplingConfig\.(\w+)=", lambda m: _flag_or_key(m[1]), str(e)))
    try:
        jnp.dtype(cfg.dtype)
    except (TypeError, ValueError):
        bad(f"dtype {cfg.dtype!r} is not a dtype (bfloat16, float16 or float32)")
    tok = cfg.tokenizer
    if tok and not (tok in GENERATED or Path(tok).exists() or hub.is_hub_id(tok)):
        bad(f"--tokenizer {cfg.tokenizer}: no such directory (nor a hub id or one of {', '.join(GENERATED)})")
    if cfg.model and (why := _misnamed(cfg.model)):
        bad(f"--model {why}")


def _validate_bon(cfg: BonConfig, bad) -> None:
    unknown = [s for s in cfg.strategy if s not in BON_STRATEGIES]
    if not cfg.strategy or unknown:
        bad(f"--strategy must be a comma-separated subset of {','.join(BON_STRATEGIES)}, got {cfg.strategy!r}")
    if not cfg.n or min(cfg.n) < 1:
        bad(f"--n must be numbers >= 1, got {cfg.n!r}")
    if cfg.extract not in ("", "choice", "math"):
        bad(f"--extract must be choice or math, got {cfg.extract!r}")
    if cfg.limit < 0:
        bad(f"--limit must be >= 0 (0: all), got {cfg.limit}")
    if cfg.protocol not in ("tournament", "rrm-conflict-pairs") or cfg.rounds < 1 or cfg.runs < 1:
        bad(
            f"--protocol must be tournament or rrm-conflict-pairs and --rounds, --runs >= 1, got {cfg.protocol!r}, "
            f"{cfg.rounds}, {cfg.runs}"
        )
    if cfg.policy and (why := _misnamed(cfg.policy)):
        bad(f"--policy {why}")
    if cfg.policy_temperature < 0 or cfg.policy_max_new_tokens < 1:
        bad(
            "--policy-temperature must be >= 0 and --policy-max-new-tokens >= 1, got "
            f"{cfg.policy_temperature}, {cfg.policy_max_new_tokens}"
        )


def think_budgets(cfg) -> tuple:
    """The thinking budgets a config runs: ``(0,)`` under ``direct``, else its max_think_tokens as a tuple."""
    if cfg.direct:
        return (0,)
    b = cfg.max_think_tokens
    return b if isinstance(b, tuple) else (b,)


def _flag_or_key(key: str) -> str:
    """How a user sets a [sampling] key: its flag (``--top-p 0.9``) or ``sampling.KEY=``."""
    return f"--{key.replace('_', '-')} " if key in SAMPLING_FLAGS else f"sampling.{key}="


def _misnamed(spec: str) -> str | None:
    """Why ``spec`` names no model (core.specs, what ``load_or_init`` reads), checked without loading; None if it does."""
    try:
        model_spec(spec)
    except ConfigError as e:
        return str(e)
    return None


def sampling_config(opts: JudgeOptions, max_think_tokens: int | None) -> SamplingConfig:
    """The judge's ``[sampling]`` with the command's seed, for one thinking budget."""
    return dataclasses.replace(opts.sampling, seed=opts.seed, max_think_tokens=max_think_tokens)


# ---------------------------------------------------------------------------------------------- parsing
def _metavar(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return _metavar(typing.get_args(tp)[0]) + ",..."
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return "|".join(_metavar(a) for a in typing.get_args(tp) if a is not type(None)) + "|none"
    return {int: "INT", float: "FLOAT", bool: "true|false", str: "STR"}.get(tp, "VALUE")


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def build_config(
    cls,
    argv: list[str],
    prog: str,
    description: str,
    origins: dict[str, str] | None = None,
    positional: str | None = None,
):
    """defaults < recipe.toml (a positional *.toml or shipped recipe name) < --flags < key=value.

    ``origins``, when given, receives field -> recipe file for the values that came from a recipe; ``positional``
    names the field that one other bare argument sets (``rrm-jax bon DATA``), as its flag would."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # one flag a field, the nested [sampling] through the flags of its common keys
    flat = {name: (hints[name], fields[name].default) for name in fields if name != "sampling"}
    base = fields["sampling"].default if "sampling" in fields else None
    nested = typing.get_type_hints(SamplingConfig) if base is not None else {}
    flat.update({k: (nested[k], getattr(base, k)) for k in (SAMPLING_FLAGS if base is not None else ())})
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("rest", nargs="*", help="an optional recipe .toml, then key=value overrides")
    for name, (tp, default) in flat.items():
        ap.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=_metavar(tp),
            help=f"{HELP.get((cls.__name__, name), HELP.get(name, ''))} (default {default!r})".strip(),
        )
    # a bare boolean flag (--direct) means true; --direct false still works, and a bare one never eats the next word
    bools = {"--" + n.replace("_", "-") for n, (tp, _) in flat.items() if tp is bool}
    argv = [
        x
        for i, a in enumerate(argv)
        for x in ([a, "true"] if a in bools and (i + 1 == len(argv) or argv[i + 1].lower() not in _BOOL_WORDS) else [a])
    ]
    ns = ap.parse_intermixed_args(argv)
    recipes, overrides = [], []
    for item in ns.rest:
        if positional and getattr(ns, positional) is None and "=" not in item and not item.endswith(".toml"):
            setattr(ns, positional, item)
            continue
        if "=" in item:
            key, _, value = item.partition("=")
            overrides.append(configs.override_layer(f"{key.strip().replace('-', '_')}={value}"))  # max-items=3 too
            continue
        recipe = shipped.find(item, "eval")
        if recipe is not None:
            recipes.append(configs.file_layer(recipe))
        elif item.endswith(".toml"):
            raise ConfigError(f"recipe {item}: no such file (shipped recipes: {', '.join(shipped.names('eval'))})")
        else:
            raise ConfigError(f"unexpected argument {item!r} (expected a .toml recipe or key=value)")
    flags = [
        (f"--{k.replace('_', '-')} {v}", {"sampling": {k: v}} if k in SAMPLING_FLAGS else {k: v}, True)
        for k, v in vars(ns).items()
        if k in flat and v is not None
    ]
    try:
        cfg = configs.build(cls, recipes + flags + overrides)
    except ConfigError as e:  # a bad [sampling] value: name it as the user set it (its flag), not every source
        bad = re.search(r"SamplingConfig\.(\w+)=(.*)", str(e))
        if bad is None:
            raise
        raise ConfigError(_flag_or_key(bad[1]) + bad[2]) from None
    if origins is not None:
        later = {k for _, values, _ in flags + overrides for k in values}
        origins.update({k: source for source, values, _ in recipes for k in values if k not in later})
    return cfg


# where to get each dataset when a recipe's path (e.g. ../shared/..., the development checkout's) is absent
DATA_HINTS = {
    "pandalm": "the PandaLM test set: data/testset-v1.json of github WeOpenML/PandaLM",
    "llmbar": "a directory of LLMBar .json files: Dataset/LLMBar of github princeton-nlp/LLMBar",
    "rewardbench": "a RewardBench filtered-split .parquet/.json file, or an empty data= to download it",
    "judgebench": "a JudgeBench .jsonl: data/dataset=judgebench,response_model=*.jsonl of github ScalerLab/JudgeBench",
    "rmbench": "RM-Bench's data/total_dataset.json (or a domain file) of github THU-KEG/RM-Bench",
    "jsonl": "a JSONL of {query, response_a, response_b, label}",
}


def check_data(cfg, origin: dict[str, str]):
    """``cfg`` with its dataset found before anything heavy starts: a local path, or a hub dataset id (its cached
    snapshot, downloaded when online); otherwise a message saying what to pass instead."""
    value = getattr(cfg, "data", "")
    if value and (local := hub.data_path(value)) != value:
        return dataclasses.replace(cfg, data=local)
    if value and not Path(value).exists():
        what = DATA_HINTS.get(getattr(cfg, "dataset", "jsonl"), "the dataset")
        raise ConfigError(shipped.missing_input("data", value, what, origin.get("data", "")))
    return cfg
