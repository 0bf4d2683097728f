"""Reward-guided best-of-N: pick one of a query's n candidates and score the pick, per strategy and n.

Input (:func:`read_bon`): JSONL of ``{query, candidates: [str, ...], correct: [bool, ...]}`` or ``{query, candidates,
answer}`` (a candidate is correct when its extracted final answer equals ``answer``: ``rrm_jax.data.answers``), or
``{query, answer}`` when a policy writes the candidates first (:func:`generate_candidates`); PPE's best-of-K rows
``{question_id, prompt, response_1..K, scores}`` (MMLU-Pro, MATH, GPQA; .jsonl, .json or .parquet) read as
``{id, query, candidates, correct}`` (:func:`from_ppe`); RewardBench 2's rows ``{id, prompt, chosen: [...],
rejected: [...], num_correct, subset}`` with every row's candidates competing at once (n = all, :func:`from_rb2`,
scored by its official rules in the summary). For each n, a query's FIRST n candidates compete:

- ``knockout`` / ``elo``: the judge's tournament (``rrm_jax.judge.tournament``: n - 1 matches / a Bradley-Terry
  round-robin). The tournaments of a chunk of queries (every n, both strategies) run side by side and their
  matches go to the judge as one ``compare_many`` per round (:func:`rrm_jax.judge.tournament.run_many`);
- ``random``: a seeded pick; ``majority``: the most common extracted answer (self-consistency; ties go to the
  answer seen first, the pick is its first candidate); ``oracle``: correct when any of the n is (the upper bound).

Records (``OUT/records.jsonl``, one per query, appended per chunk) resume like eval's (``open_records``): a killed
run redoes only the queries it had not written, and a rerun with other data or settings is refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rrm_jax.core.distributed import is_main
from rrm_jax.core.progress import Progress
from rrm_jax.core.seeds import derive_seed
from rrm_jax.core.tokenizers import chat_prompt
from rrm_jax.data.answers import EXTRACTORS, same_answer
from rrm_jax.data.records import DataError
from rrm_jax.data.sources import BadItem, data_files, iter_json_items, text_lines
from rrm_jax.evaluation.fit import misfit
from rrm_jax.evaluation.records import RECORD_VERSION, open_records
from rrm_jax.judge import tournament
from rrm_jax.sampler import SamplingConfig

STRATEGIES = ("knockout", "elo", "random", "majority", "oracle")
JUDGE_STRATEGIES = ("knockout", "elo")


@dataclasses.dataclass(frozen=True)
class BonItem:
    id: str
    query: str
    candidates: tuple[str, ...]
    correct: tuple[bool, ...]
    answers: tuple[str | None, ...] | None = None  # extracted final answers (None: no extractor)
    answer: str | None = None  # the reference answer, when the input gave one
    rb2: tuple[str, str] | None = None  # RewardBench 2's (subset, id): the row is scored by its rules


# ---------------------------------------------------------------------------------------------- input
def read_bon(path: str | Path, *, extract: str = "", policy: bool = False, limit: int = 0) -> list[BonItem]:
    """The best-of-N queries of a JSONL file, with file:line:field errors. With ``policy`` the candidates are yet
    to be generated: an ``answer`` is required (and ``candidates`` / ``correct`` are ignored)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if extract and extract not in EXTRACTORS:
        raise DataError(f"unknown extractor {extract!r}; known: {', '.join(EXTRACTORS)}")
    out: list[BonItem] = []
    seen: dict[str, int] = {}
    for f, n, item in _items(p):
        if limit and len(out) >= limit:
            break

        def bad(field, msg, n=n, f=f):
            return DataError(f"{f}:{n}{':' + field if field else ''}: {msg}")

        if isinstance(item, BadItem):
            raise bad(item.field, item.message)
        if not isinstance(item, dict):
            raise bad(None, f"expected a JSON object, got {type(item).__name__}")
        item = from_ppe(from_rb2(item, bad))
        if not isinstance(item.get("query"), str) or not item["query"].strip():
            raise bad("query", "missing or empty (expected a string)")
        qid = item.get("id", f"{p.stem}-{n}")
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise bad("id", f"expected an int or string, got {type(qid).__name__}")
        qid = str(qid)
        if qid in seen:
            raise bad("id", f"duplicate id {qid!r} (first at line {seen[qid]})")
        seen[qid] = n
        answer = item.get("answer")
        if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
            raise bad("answer", f"expected a string or number, got {type(answer).__name__}")
        answer = None if answer is None else str(answer)
        if answer is not None and not extract:
            raise bad("answer", "an answer needs an extractor to compare candidates with: pass --extract choice|math")
        if policy:
            if answer is None:
                raise bad("answer", "missing: with --policy the generated candidates are scored against 'answer'")
            out.append(BonItem(qid, item["query"], (), (), None, answer))
            continue
        cands = item.get("candidates")
        if not isinstance(cands, list) or not cands or not all(isinstance(c, str) for c in cands):
            raise bad("candidates", "expected a non-empty list of strings")
        correct = item.get("correct")
        if correct is not None:
            if not isinstance(correct, list) or not all(isinstance(c, bool) for c in correct):
                raise bad("correct", "expected a list of true/false")
            if len(correct) != len(cands):
                raise bad("correct", f"{len(correct)} entries for {len(cands)} candidates")
        elif answer is None:
            raise bad("correct", "neither 'correct' (one bool per candidate) nor 'answer' given")
        base = BonItem(qid, item["query"], (), (), None, answer, item.get("rb2"))
        out.append(with_candidates(base, cands, extract, correct))
    return out


def _items(p: Path):
    """(file, line or row number, item or BadItem) of a .jsonl, a .json list or a .parquet table (PPE's files), or
    of each of them below a directory (a hub dataset's snapshot)."""
    if p.is_dir():
        for f in data_files(p):
            yield from _items(f)
        return
    if p.suffix.lower() in (".json", ".parquet"):
        yield from ((p, n, item) for n, item in iter_json_items(p))
        return
    for n, line in text_lines(p):
        if isinstance(line, BadItem):
            yield p, n, line
            continue
        try:
            yield p, n, json.loads(line)
        except ValueError as e:
            yield p, n, BadItem(None, f"malformed JSON ({getattr(e, 'msg', e)})")


def from_ppe(item: dict) -> dict:
    """A PPE best-of-K row ``{question_id, prompt, response_1 .. response_K, scores}`` (a score > 0: a correct
    response) as ours, ``{id, query, candidates, correct}``; any other row as it is."""
    if "response_1" not in item or "prompt" not in item or "query" in item:
        return item
    k = 1
    while f"response_{k + 1}" in item:
        k += 1
    scores = item.get("scores")
    correct = (
        [float(s) > 0 for s in scores]
        if isinstance(scores, list) and all(isinstance(s, (int, float)) for s in scores)
        else scores
    )
    row = {"query": item["prompt"], "candidates": [item[f"response_{i}"] for i in range(1, k + 1)], "correct": correct}
    if "question_id" in item:
        row["id"] = item["question_id"]
    return row


def from_rb2(item: dict, bad: Callable[[str | None, str], Exception]) -> dict:
    """A RewardBench 2 row (``chosen`` and ``rejected`` lists, a ``subset``) as ours: the candidates are the
    chosen then the rejected, the first ``num_correct`` correct, and the id qualified by the subset (its subsets
    reuse ids); any other row as it is. ``bad(field, message)`` is the reader's error."""
    if not (isinstance(item.get("chosen"), list) and "rejected" in item and "subset" in item):
        return item
    chosen, rejected, subset = item["chosen"], item["rejected"], item["subset"]
    for field, texts in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise bad(field, "expected a non-empty list of strings")
    if not isinstance(subset, str) or not subset:
        raise bad("subset", "expected a subset name")
    k = item.get("num_correct", len(chosen))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(chosen):
        raise bad("num_correct", f"expected 1..{len(chosen)} (the chosen are the correct ones), got {k!r}")
    rid = item.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        raise bad("id", f"expected an int or string, got {type(rid).__name__}")
    if subset == "Ties" and (not isinstance(rid, str) or rid.split(":")[0] not in ("ref", "tied")):
        raise bad("id", f"a Ties row's id is ref:<k> or tied:<k>, got {rid!r}")
    return {
        "id": f"{subset}/{rid}",
        "query": item.get("prompt"),
        "candidates": chosen + rejected,
        "correct": [i < k for i in range(len(chosen) + len(rejected))],
        "rb2": (subset, str(rid)),
    }


def with_candidates(
    item: BonItem, candidates: Sequence[str], extract: str = "", correct: Sequence[bool] | None = None
) -> BonItem:
    """``item`` with these candidates; their correctness from ``correct`` or else from ``item.answer``."""
    answers = tuple(EXTRACTORS[extract](c) for c in candidates) if extract else None
    if correct is None:
        correct = [same_answer(extract, a, item.answer) for a in answers]
    return dataclasses.replace(
        item, candidates=tuple(candidates), correct=tuple(bool(c) for c in correct), answers=answers
    )


# ---------------------------------------------------------------------------------------------- picks
def _key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def pick_random(item: BonItem, n: int, seed: int) -> int:
    """A seeded uniform pick among the first n, a function of (seed, query id, n) only."""
    return int(np.random.default_rng([seed & 0xFFFFFFFF, _key(item.id), n]).integers(n))


def pick_majority(answers: Sequence[str | None], n: int) -> int:
    """The first candidate holding the most common extracted answer among the first n (ties: the answer seen
    first); candidate 0 when none of them has an answer."""
    counts = Counter(a for a in answers[:n] if a is not None)
    if not counts:
        return 0
    top = max(counts.values())
    return next(i for i, a in enumerate(answers[:n]) if a is not None and counts[a] == top)


# ---------------------------------------------------------------------------------------------- batching
# ---------------------------------------------------------------------------------------------- one chunk
def pick_chunk(
    judge,
    chunk: Sequence[tuple[int, BonItem]],
    *,
    strategies: Sequence[str],
    ns: Sequence[int],
    votes: int = 1,
    swap: str = "random",
    seed: int = 0,
) -> list[dict]:
    """The records of a chunk of (row, item): every strategy at every n <= the item's candidates."""
    recs = []
    jobs, slots = [], []
    for row, it in chunk:
        results: dict[str, dict] = {s: {} for s in strategies if s != "majority" or it.answers is not None}
        for n in ns:
            key, n = n_key(n), n or len(it.candidates)
            if n > len(it.candidates):
                continue
            for s in results:
                if s == "oracle":
                    results[s][key] = {"pick": None, "correct": any(it.correct[:n])}
                elif s in ("random", "majority"):
                    k = pick_random(it, n, seed) if s == "random" else pick_majority(it.answers, n)
                    results[s][key] = {"pick": k, "correct": it.correct[k]}
            judged = [s for s in results if s in JUDGE_STRATEGIES]
            error = _misfit(judge, it, n) if judged else None
            for s in judged:
                if error is not None:  # recorded and skipped, like eval's over-long items
                    results[s][key] = {"pick": None, "correct": None, "error": error}
                    continue
                tseed = derive_seed(seed, _key(it.id), n, JUDGE_STRATEGIES.index(s))
                jobs.append(tournament.rounds_of(s, it.query, it.candidates[:n], seed=tseed))
                slots.append((len(recs), s, key, tseed))
        recs.append(
            {
                "id": it.id,
                "row": row,
                "n_candidates": len(it.candidates),
                "correct": list(it.correct),
                "answers": None if it.answers is None else list(it.answers),
                **({"rb2": {"subset": it.rb2[0], "id": it.rb2[1]}} if it.rb2 else {}),
                "results": results,
            }
        )
    if not jobs:
        return recs
    chunk_seed = derive_seed(seed, chunk[0][0], 0xB0)

    calls = itertools.count()

    def compare(items, ids):
        keys = [derive_seed(slots[k][3], c, i) for k, c, i in ids]
        return judge.compare_many(
            items, votes=votes, swap=swap, seed=derive_seed(chunk_seed, next(calls)), item_ids=keys
        )

    t0 = time.perf_counter()
    rankings = tournament.run_many(compare, jobs, with_ids=True)
    dt = time.perf_counter() - t0
    for (r, s, key, _), rk in zip(slots, rankings):
        k = int(rk.best)
        recs[r]["results"][s][key] = {
            "pick": k,
            "correct": recs[r]["correct"][k],
            "scores": candidate_scores(rk),
            "comparisons": rk.comparisons,
            "tokens": int(rk.tokens),
            "samples": int(rk.samples),
        }
    for rec in recs:
        rec["seconds"] = dt / len(recs)
    return recs


def n_key(n: int) -> str:
    """A records / summary key of an n; 0 is every candidate of a query ("all")."""
    return str(n) if n else "all"


def candidate_scores(rk: tournament.Ranking) -> list[float]:
    """Each candidate's score in a tournament, for rules that read scores (RewardBench 2's): a knockout's rounds
    reached, a round robin's ratings. The ratings are rounded to 1e-6 Elo points so that a symmetric record
    ties exactly, as the fit only converges to 1e-10."""
    if rk.strategy == "knockout":
        return [float(x) for x in rk.reached]
    return [round(float(x), 6) for x in rk.ratings]


def _misfit(judge, it: BonItem, n: int) -> str | None:
    """The longest match among the first n (the two longest candidates) decides whether every match fits."""
    if n < 2:
        return None
    a, b = sorted(it.candidates[:n], key=len)[-2:]
    return misfit(judge, it.id, it.query, a, b)


# ---------------------------------------------------------------------------------------------- runs
def run_bon(
    judge,
    items: Sequence[BonItem],
    out: str | Path,
    *,
    meta: dict,
    strategies: Sequence[str] = STRATEGIES,
    ns: Sequence[int] = (2, 4, 8, 16, 32),
    votes: int = 1,
    swap: str = "random",
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    restart: bool = False,
) -> list[dict]:
    """Pick for every item not yet in ``out/records.jsonl`` (chunks of ``batch_size`` queries, each appended when
    done) and return the records of ``items`` in order. ``judge`` may be None when no judge strategy runs."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    if judge is None and any(s in JUDGE_STRATEGIES for s in strategies):
        raise ValueError("knockout / elo need a judge (--model)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len({it.id for it in items}) != len(items):
        raise DataError("items have duplicate ids")
    meta = {
        **meta,
        "strategy": list(strategies),
        "n": [int(n) for n in ns],
        "votes": votes,
        "swap": swap,
        "seed": seed,
        "record_version": RECORD_VERSION,
    }
    main = is_main()
    with open_records(Path(out) / "records.jsonl", meta, restart=restart) as (rf, done):
        rows = [(row, it) for row, it in enumerate(items)]
        todo = [x for x in rows if x[1].id not in done]
        tokens = 0
        with Progress(
            "best-of-N",
            len(items),
            completed=len(items) - len(todo),
            rate="queries",
            fmt="{tokens} judge tokens",
            enabled=progress and main,
        ) as bar:
            # fixed chunks of the whole list, so a resumed run batches (and seeds) the rest as an unbroken one would
            for start in range(0, len(rows), batch_size):
                chunk = [x for x in rows[start : start + batch_size] if x[1].id not in done]
                if not chunk:
                    continue
                new = pick_chunk(judge, chunk, strategies=strategies, ns=ns, votes=votes, swap=swap, seed=seed)
                if main:
                    rf.append(new)
                done.update((r["id"], r) for r in new)
                tokens += sum(v.get("tokens", 0) for r in new for per in r["results"].values() for v in per.values())
                bar.update(advance=len(new), tokens=tokens)
    return [done[it.id] for it in items]


def generate_candidates(
    model,
    items: Sequence[BonItem],
    path: str | Path,
    *,
    n: int,
    extract: str,
    meta: dict,
    temperature: float = 1.0,
    max_new_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    restart: bool = False,
    generate: Callable | None = None,
    max_slots: int = 32,
) -> list[BonItem]:
    """Sample ``n`` candidates per query from a policy (its chat prompt; sampling seeded per chunk of queries),
    appended to ``path`` as they come ({id, query, answer, candidates}); a rerun reuses what is there.
    ``model`` is only touched when some query still needs candidates."""
    if generate is None:
        from rrm_jax.sampler import generate
    meta = {
        **meta,
        "seed": seed,
        "record_version": RECORD_VERSION,
        "policy": {**meta.get("policy", {}), "n": n, "temperature": temperature, "max_new_tokens": max_new_tokens},
    }
    main = is_main()
    with open_records(path, meta, restart=restart) as (rf, done):
        rows = list(enumerate(items))
        left = sum(it.id not in done for it in items)
        with Progress(
            "policy candidates", len(items), completed=len(items) - left, rate="queries", enabled=progress and main
        ) as bar:
            for start in range(0, len(rows), batch_size):
                chunk = [(r, it) for r, it in rows[start : start + batch_size] if it.id not in done]
                if not chunk:
                    continue
                tok = model.tokenizer  # first touched here: a finished file never needs the model (lazy loading)
                if tok is None:
                    raise ValueError("the policy model has no tokenizer (pass --tokenizer)")
                cfg = SamplingConfig(
                    n=n,
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                    max_slots=max_slots,
                    seed=derive_seed(seed, chunk[0][0], 0xC4),
                )
                comps = generate(model, [chat_prompt(tok, it.query) for _, it in chunk], cfg)
                new = [
                    {
                        "id": it.id,
                        "query": it.query,
                        "answer": it.answer,
                        "candidates": [c.text for c in comps[k * n : (k + 1) * n]],
                    }
                    for k, (_, it) in enumerate(chunk)
                ]
                if main:
                    rf.append(new)
                done.update((r["id"], r) for r in new)
                bar.update(advance=len(new))
    return [with_candidates(it, done[it.id]["candidates"], extract) for it in items]
