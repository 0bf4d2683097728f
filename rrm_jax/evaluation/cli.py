"""Commands `rrm-jax eval | judge | rank`: load the judge, run the records, print the summary.

Configs and their parsing live in :mod:`rrm_jax.evaluation.config`; the run in :mod:`rrm_jax.evaluation.run`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rrm_jax.core.api import check_tokenizer_fits, load_or_init
from rrm_jax.core.configs import write_toml
from rrm_jax.core.distributed import initialize, is_main
from rrm_jax.core.errors import ConfigError
from rrm_jax.core.progress import Progress
from rrm_jax.core.sharding import make_mesh
from rrm_jax.core.tokenizers import load_tokenizer
from rrm_jax.data.pipeline import load_pairs
from rrm_jax.data.records import DataError, read_pairs_jsonl, read_queries
from rrm_jax.evaluation.config import (
    EvalConfig,
    JudgeOptions,
    JudgePairsConfig,
    RankConfig,
    build_config,
    check_data,
    sampling_config,
    think_budgets,
    validate,
)
from rrm_jax.evaluation.fit import clamp_generation, misfit
from rrm_jax.evaluation.records import (
    RECORD_VERSION,
    EvalError,
    RecordsFile,
    fingerprint_file,
    judge_identity,
    load_records,
    open_records,
    preflight,
)
from rrm_jax.evaluation.report import position_line, summarize, write_judgebench, write_summary
from rrm_jax.evaluation.run import Setting, eval_meta, evaluate, records_path, run_meta, run_records
from rrm_jax.judge import DirectJudge, Judge
from rrm_jax.judge.prompt import get_prompt


# ---------------------------------------------------------------------------------------------- model + judge
def load_model(opts: JudgeOptions):
    if not opts.model:
        raise ConfigError("--model is required (a checkpoint directory, a model TOML or a preset name)")
    mesh = None
    if opts.mesh:  # three sizes (validate); empty: load_or_init's all-devices data-parallel mesh
        mesh = make_mesh(opts.mesh, devices=jax.devices()[: int(np.prod(opts.mesh))])
    model = load_or_init(opts.model, seed=opts.seed, mesh=mesh, dtype=jnp.dtype(opts.dtype))
    if model.tokenizer is None and opts.tokenizer:
        tokenizer = load_tokenizer(opts.tokenizer)
        check_tokenizer_fits(model.config, tokenizer)
        model = dataclasses.replace(model, tokenizer=tokenizer)
    if model.tokenizer is None:  # a judge renders its prompt through a chat template
        raise ConfigError(
            f"--model {opts.model}: has no tokenizer; pass --tokenizer DIR (a tokenizer directory or hub id, or "
            "bytes / chars for a generated one)"
        )
    return model


def make_judge(model, opts: JudgeOptions, max_think_tokens: int | None):
    """A Judge of ``model`` (``opts.sampling.max_new_tokens`` as :func:`clamp_generation` left it); a budget of 0 (``--direct``)
    gives the :class:`DirectJudge` baseline."""
    cls = DirectJudge if max_think_tokens == 0 else Judge
    return cls(
        model,
        prompt=opts.prompt,
        sampling=sampling_config(opts, max_think_tokens),
        max_prompt_tokens=opts.max_prompt_tokens or None,
    )


def _join(opts: JudgeOptions) -> bool:
    """Join the multi-host run when asked (before any JAX work); returns whether this process writes outputs."""
    if opts.distributed:
        initialize()
    return is_main()


# ---------------------------------------------------------------------------------------------- commands
def eval_main(argv: list[str], *, judge_factory=None) -> int:
    """`rrm-jax eval`: every (votes, budget) setting -> records-<setting>.jsonl, then summary + plots.

    ``judge_factory(max_think_tokens) -> judge`` replaces model loading (tests pass a fake judge)."""
    origins: dict[str, str] = {}
    cfg = build_config(
        EvalConfig, argv, "rrm-jax eval", "evaluate a judge on RewardBench / PandaLM / LLMBar / JSONL", origins
    )
    validate(cfg)
    cfg = check_data(cfg, origins)
    if judge_factory is None and not cfg.model:
        raise ConfigError("--model is required (a checkpoint directory, a model TOML or a preset name)")
    main = _join(cfg)
    out = Path(cfg.out)
    try:
        pairs = load_pairs(
            cfg.dataset, cfg.data or None, data_dir=cfg.data_dir or None, on_bad=cfg.on_bad, split=cfg.split
        )
    except (DataError, ValueError) as e:
        print(f"rrm-jax eval: {e}", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; `rrm-jax eval` writes a directory (config, records, summary)")
    # every setting's records checked before anything is written or loaded: a refused run changes no file
    identity = {**judge_identity(cfg), "split": cfg.split, "prompt": get_prompt(cfg.prompt).key}
    try:
        for st in [Setting(votes, budget) for budget in think_budgets(cfg) for votes in cfg.votes]:
            meta = eval_meta(pairs, cfg.dataset, st, None, identity)
            meta = run_meta(meta, st.votes, cfg.swap, cfg.seed, cfg.adaptive)
            preflight(records_path(out, st), meta, restart=cfg.restart)
    except (EvalError, DataError) as e:
        print(f"rrm-jax eval: {e}", file=sys.stderr)
        return 2
    if main:
        write_toml(cfg, out / "config.toml")
        (out / "problems.json").write_text(
            json.dumps({"skipped": [str(p) for p in pairs.problems], "notes": [str(p) for p in pairs.notes]}, indent=1)
        )
    if pairs.problems and main:
        print(f"skipped {len(pairs.problems)} bad items (listed in {out / 'problems.json'})", file=sys.stderr)
    if judge_factory is None:
        model = load_model(cfg)
        gen = clamp_generation(model, cfg)
        judge_factory = lambda budget: make_judge(model, gen, budget)  # noqa: E731
    summaries = []
    try:
        for budget in think_budgets(cfg):
            judge = judge_factory(budget)
            for votes in cfg.votes:
                summaries.append(
                    evaluate(
                        judge,
                        pairs,
                        out,
                        votes=votes,
                        swap=cfg.swap,
                        seed=cfg.seed,
                        max_items=cfg.max_items,
                        batch_size=cfg.batch_size,
                        adaptive=cfg.adaptive,
                        kind=cfg.dataset,
                        setting=Setting(votes, budget),
                        progress=cfg.progress,
                        extra_meta=identity,
                        restart=cfg.restart,
                    )
                )
    except (EvalError, DataError) as e:
        print(f"rrm-jax eval: {e}", file=sys.stderr)
        return 2
    if not main:
        return 0
    for s in summaries:
        if s["errors"]:
            print(
                f"{s['setting']}: {s['errors']} items not judged (their records hold the reason under 'error'; "
                "a rerun with the same --out retries them)",
                file=sys.stderr,
            )
    # the records files may also hold items beyond this run's max_items or split (an earlier, larger run):
    # keep this run's items, by id (a row number names another item under another split)
    n = len(pairs) if cfg.max_items <= 0 else min(len(pairs), cfg.max_items)
    ids = {pairs[i].id for i in range(n)}
    tags = {s["setting"] for s in summaries}
    records = {k: [r for r in v if r["id"] in ids] for k, v in load_records(out).items() if k in tags}
    write_summary(out, summaries, plots=cfg.plots, records=records)
    if cfg.dataset == "judgebench":
        write_judgebench(out, records)
    print((out / "summary.md").read_text())
    return 0


def judge_main(argv: list[str], *, judge=None) -> int:
    """`rrm-jax judge`: records for a JSONL of pairs (resumable); accuracy when the pairs carry labels."""
    cfg = build_config(JudgePairsConfig, argv, "rrm-jax judge", "judge a JSONL of pairs")
    validate(cfg)
    if not cfg.pairs:
        raise ConfigError("--pairs FILE.jsonl is required")
    main = _join(cfg)
    try:  # everything about the input and the output is settled before the model's slow load
        meta = {
            "dataset": "jsonl",
            "source": cfg.pairs,
            "fingerprint": fingerprint_file(cfg.pairs),  # of the bytes read next, not of a later edit
            **_judge_meta(cfg),
        }
        pairs = read_pairs_jsonl(cfg.pairs, on_bad=cfg.on_bad, require_label=False)
        preflight(cfg.out, run_meta(meta, cfg.votes, cfg.swap, cfg.seed, cfg.adaptive), restart=cfg.restart)
    except (EvalError, DataError) as e:
        print(f"rrm-jax judge: {e}", file=sys.stderr)
        return 2
    for p in pairs.problems if main else ():
        print(f"skipped: {p}", file=sys.stderr)
    judge = judge or _real_judge(cfg)
    try:
        recs = run_records(
            judge,
            pairs.records,
            cfg.out,
            meta=meta,
            votes=cfg.votes,
            swap=cfg.swap,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            adaptive=cfg.adaptive,
            progress=cfg.progress,
            restart=cfg.restart,
        )
    except (EvalError, DataError) as e:
        print(f"rrm-jax judge: {e}", file=sys.stderr)
        return 2
    if not main:
        return 0
    # an item that was not judged (over the context, ...) has no verdict to score: it is counted, not credited
    errors = [r["error"] for r in recs if r.get("error")]
    s = summarize([r for r in recs if not r.get("error")])
    msg = f"{len(recs)} pairs -> {cfg.out}: {s['n']} judged, {s['no_verdict']} of them without a verdict"
    if errors:
        msg += f"; {len(errors)} not judged (e.g. {errors[0]})"
    if s["n_scored"]:
        msg += f"; accuracy {100 * s['accuracy']:.1f}% on {s['n_scored']} labelled pairs judged"
    print(msg)
    print(position_line(s["position"]))
    return 0


def rank_main(argv: list[str], *, judge=None) -> int:
    """`rrm-jax rank`: a tournament per query; one JSONL line per query (resumable by id)."""
    cfg = build_config(RankConfig, argv, "rrm-jax rank", "rank candidates per query with a tournament")
    validate(cfg)
    if not cfg.queries:
        raise ConfigError("--queries FILE.jsonl is required")
    main = _join(cfg)
    try:  # the input and the output are checked before the model's slow load
        meta = {
            "dataset": "queries",
            "source": cfg.queries,
            "fingerprint": fingerprint_file(cfg.queries),
            **_judge_meta(cfg),
            "strategy": cfg.strategy,
            "votes": cfg.votes,
            "swap": cfg.swap,
            "seed": cfg.seed,
            "record_version": RECORD_VERSION,
        }
        queries = read_queries(cfg.queries)
        preflight(cfg.out, meta, restart=cfg.restart)
    except (EvalError, DataError) as e:
        print(f"rrm-jax rank: {e}", file=sys.stderr)
        return 2
    judge = judge or _real_judge(cfg)
    try:
        with open_records(cfg.out, meta, restart=cfg.restart) as (rf, done):
            _rank_queries(judge, cfg, queries, rf, done, main)
    except (EvalError, DataError) as e:
        print(f"rrm-jax rank: {e}", file=sys.stderr)
        return 2
    if main:
        errors = [r["error"] for r in RecordsFile(cfg.out).load(repair=False) if r.get("error")]
        msg = f"{len(queries) - len(errors)} of {len(queries)} queries ranked -> {cfg.out}"
        print(msg + (f"; {len(errors)} not ranked (e.g. {errors[0]})" if errors else ""))
    return 0


def _rank_queries(judge, cfg: RankConfig, queries: list[dict], rf: RecordsFile, done: dict, main: bool) -> None:
    todo = [q for q in queries if q["id"] not in done or done[q["id"]].get("error")]
    with Progress(
        f"ranking ({cfg.strategy})",
        len(queries),
        completed=len(queries) - len(todo),
        rate="queries",
        fmt="{tokens} judge tokens",
        enabled=cfg.progress and main,
    ) as bar:
        tokens = 0
        for q in todo:
            error = _rank_misfit(judge, q)
            if error is not None:  # one over-long query is recorded and skipped, not the end of the run
                rec = {
                    "id": q["id"],
                    "query": q["query"],
                    "strategy": cfg.strategy,
                    "votes": cfg.votes,
                    "best": None,
                    "best_candidate": None,
                    "error": error,
                }
                if main:
                    rf.append([rec])
                bar.update(advance=1, tokens=tokens)
                continue
            r = judge.rank(
                q["query"], q["candidates"], strategy=cfg.strategy, votes=cfg.votes, seed=cfg.seed, swap=cfg.swap
            )
            rec = {
                "id": q["id"],
                "query": q["query"],
                "strategy": cfg.strategy,
                "votes": cfg.votes,
                "best": int(r.order[0]),
                "best_candidate": q["candidates"][r.order[0]],
                **r.to_dict(),
            }
            if main:  # multi-host: every process plays every match, one writes
                rf.append([rec])
            tokens += int(r.tokens)
            bar.update(advance=1, tokens=tokens)


def _rank_misfit(judge, q: dict) -> str | None:
    """The longest match of a query (its two longest candidates) decides whether every match fits."""
    a, b = sorted(q["candidates"], key=len)[-2:]
    return misfit(judge, q["id"], q["query"], a, b)


def _judge_meta(opts: JudgeOptions) -> dict:
    """The records' keys of the judge itself: its identity (weights, tokenizer, sampling), prompt and budget."""
    return {
        **judge_identity(opts),
        "max_think_tokens": think_budgets(opts)[0],
        "direct": opts.direct,
        "prompt": get_prompt(opts.prompt).key,
    }


def _real_judge(cfg):
    model = load_model(cfg)
    return make_judge(model, clamp_generation(model, cfg), think_budgets(cfg)[0])
