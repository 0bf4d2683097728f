"""`rrm-jax bon DATA --model JUDGE --out DIR`: reward-guided best-of-N (optionally on a policy's own candidates).

The config is :class:`rrm_jax.evaluation.config.BonConfig` (flags, recipe TOML, key=value); the picking and the
records in :mod:`rrm_jax.evaluation.bon`, the summary and plot in :mod:`rrm_jax.evaluation.bon_report`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
from pathlib import Path

from rrm_jax.core import hub
from rrm_jax.core.configs import write_toml
from rrm_jax.core.errors import ConfigError
from rrm_jax.data.records import DataError
from rrm_jax.evaluation.bon import JUDGE_STRATEGIES, generate_candidates, read_bon, run_bon
from rrm_jax.evaluation.bon_report import summarize_bon, write_bon_summary
from rrm_jax.evaluation.cli import _join, _real_judge, load_model
from rrm_jax.evaluation.config import BonConfig, build_config, think_budgets, validate
from rrm_jax.evaluation.records import EvalError, fingerprint_file, judge_identity


def bon_main(argv: list[str], *, judge=None) -> int:
    """`rrm-jax bon`; ``judge`` replaces loading ``--model`` (tests pass a simulated one)."""
    cfg = build_config(
        BonConfig, argv, "rrm-jax bon", "reward-guided best-of-N: pick among candidates with a judge", positional="data"
    )
    validate(cfg)
    if not cfg.data:
        raise ConfigError(
            "DATA is required: a JSONL of {query, candidates, correct | answer} (or {query, answer} with --policy)"
        )
    cfg = dataclasses.replace(cfg, data=hub.data_path(cfg.data))  # a hub dataset: its cached snapshot's files
    if not Path(cfg.data).exists():
        raise ConfigError(f"DATA {cfg.data}: no such file")
    uses_judge = any(s in JUDGE_STRATEGIES for s in cfg.strategy)
    if uses_judge and judge is None and not cfg.model:
        raise ConfigError("--model is required for knockout / elo (or pick --strategy random,majority,oracle)")
    main = _join(cfg)
    out = Path(cfg.out)
    try:
        items = read_bon(cfg.data, extract=cfg.extract, policy=bool(cfg.policy), limit=cfg.limit)
    except DataError as e:
        print(f"rrm-jax bon: {e}", file=sys.stderr)
        return 2
    if not items:
        print(f"rrm-jax bon: {cfg.data}: no queries", file=sys.stderr)
        return 2
    if any(it.rb2 for it in items):  # RewardBench 2 ranks each row's candidates together, however many
        cfg = dataclasses.replace(cfg, n=(0,))
    budget = think_budgets(cfg)[0]
    fingerprint = fingerprint_file(cfg.data)
    policy = {"path": cfg.policy} if cfg.policy else None
    meta = {
        "dataset": "bon",
        "source": cfg.data,
        "fingerprint": fingerprint,
        "extract": cfg.extract,
        "policy": policy,
        **(judge_identity(cfg) if uses_judge else {"model": None}),
        "max_think_tokens": budget if uses_judge else None,
        "direct": cfg.direct and uses_judge,
        "prompt": cfg.prompt if uses_judge else None,
    }
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_toml(cfg, out / "config.toml")
    if cfg.protocol == "rrm-conflict-pairs":
        return _conflict(cfg, judge, items, out, meta, main)
    try:
        if cfg.policy:
            items = _policy_candidates(cfg, items, out, fingerprint)
        if uses_judge and judge is None:
            judge = Lazy(lambda: _real_judge(cfg))
        records = run_bon(
            judge if uses_judge else None,
            items,
            out,
            meta=meta,
            strategies=cfg.strategy,
            ns=cfg.n,
            votes=cfg.votes,
            swap=cfg.swap,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            restart=cfg.restart,
        )
    except (EvalError, DataError) as e:
        print(f"rrm-jax bon: {e}", file=sys.stderr)
        return 2
    if not main:
        return 0
    summary = summarize_bon(
        records,
        strategies=cfg.strategy,
        ns=cfg.n,
        meta={**meta, "votes": cfg.votes, "seed": cfg.seed, "limit": cfg.limit},
    )
    write_bon_summary(out, summary, plots=cfg.plots)
    print((out / "summary.md").read_text())
    return 0


def _conflict(cfg: BonConfig, judge, items, out: Path, meta: dict, main: bool) -> int:
    """The RRM authors' conflict-pair protocol (rrm_jax.evaluation.conflict) instead of picking one of n."""
    from rrm_jax.evaluation.conflict import run_conflict

    try:
        scores = run_conflict(
            judge if judge is not None else Lazy(lambda: _real_judge(cfg)),
            items,
            out,
            meta={**meta, "prompt": cfg.prompt, "max_think_tokens": think_budgets(cfg)[0]},
            rounds=cfg.rounds,
            runs=cfg.runs,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            restart=cfg.restart,
        )
    except (EvalError, DataError, ValueError) as e:
        print(f"rrm-jax bon: {e}", file=sys.stderr)
        return 2
    if main:
        (out / "summary.json").write_text(json.dumps({"conflict": scores}, indent=1))
        runs = ", ".join(f"{100 * a:.1f}" for a in scores["runs"])
        print(
            f"conflict pairs: {scores['pairs']} pairs from {scores['questions'] - scores['no_conflict']} questions "
            f"({scores['no_conflict']} without a conflict); accuracy per run {runs}; voted across "
            f"{len(scores['runs'])} runs {100 * scores['voted']:.1f}"
        )
    return 0


class Lazy:
    """A model or judge loaded on first use: a resumed run whose work is all done loads nothing."""

    def __init__(self, make):
        self._make, self._obj = make, None

    def __getattr__(self, name):
        if self._obj is None:
            self._obj = self._make()
        return getattr(self._obj, name)


def _policy_candidates(cfg: BonConfig, items, out: Path, fingerprint: str):
    """The policy's max(n) samples per query (OUT/candidates.jsonl, resumed); the policy is freed before the judge
    loads."""
    policy = Lazy(lambda: load_model(dataclasses.replace(cfg, model=cfg.policy)))
    meta = {
        "dataset": "bon-policy",
        "source": cfg.data,
        "fingerprint": fingerprint,
        "model": cfg.policy,
        "policy": {"path": cfg.policy},
    }
    items = generate_candidates(
        policy,
        items,
        out / "candidates.jsonl",
        n=max(cfg.n),
        extract=cfg.extract,
        meta=meta,
        temperature=cfg.policy_temperature,
        max_new_tokens=cfg.policy_max_new_tokens,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        restart=cfg.restart,
        max_slots=cfg.sampling.max_slots,
    )
    del policy
    gc.collect()
    return items
