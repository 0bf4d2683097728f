"""Preference pairs for training a judge, from the schemas they come in, as ``{query, chosen, rejected}``.

Our own rows, ``prompt`` for ``query``, Skywork-Reward-Preference's chat message lists, and the RRM authors'
verl-style rows (``question, response1, response2, answer``). :func:`check_pair` says why a pair is unusable.
"""

from __future__ import annotations

import json
from pathlib import Path

from rrm_jax.data.sources import iter_json_items


def check_pair(pair: dict, where: str = "") -> str | None:
    """Why a preference pair is unusable (None when fine)."""
    for k in ("query", "chosen", "rejected"):
        v = pair.get(k)
        if not isinstance(v, str):
            return f"{where}field {k!r} is missing or not a string"
        if not v.strip():
            return f"{where}field {k!r} is empty"
    if pair["chosen"].strip() == pair["rejected"].strip():
        return f"{where}chosen == rejected"
    return None


def _conversation(msgs: list) -> str:
    if len(msgs) == 1:
        return str(msgs[0].get("content", ""))
    return "\n\n".join(f"{m.get('role', 'user').capitalize()}: {m.get('content', '')}" for m in msgs)


VERL_ANSWERS = {"1": 0, "2": 1, 1: 0, 2: 1}


def normalise_pair(rec: dict) -> dict:
    """{query, chosen, rejected} strings from our format, ``prompt`` for ``query``, Skywork-Reward-Preference
    records whose chosen/rejected are chat message lists (the conversation before the last reply is the query),
    or the RRM authors' verl-style rows ``{question, response1, response2, answer}`` (answer "1" / "2": the better
    one). The order a judge is shown is the pipeline's seeded coin either way (``data.swap``)."""
    rec = dict(rec)
    if "response1" in rec and "response2" in rec and rec.get("answer") in VERL_ANSWERS and "chosen" not in rec:
        better = VERL_ANSWERS[rec["answer"]]
        rec["chosen"], rec["rejected"] = (rec["response1"], rec["response2"])[:: 1 if better == 0 else -1]
        rec.setdefault("query", rec.get("question"))
    if "query" not in rec and isinstance(rec.get("prompt"), str):
        rec["query"] = rec["prompt"]
    for side in ("chosen", "rejected"):
        msgs = rec.get(side)
        if isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs):
            rec[side] = str(msgs[-1].get("content", ""))
            if "query" not in rec:
                rec["query"] = _conversation(msgs[:-1])
    return rec


def rows(path: Path):
    """(line or row number, record, or why the line is no record) of a .jsonl, or of a .json list or .parquet
    table (the RRM authors' verl-style training rows), whose unreadable file raises a DataError naming it."""
    if path.suffix.lower() in (".json", ".parquet"):
        yield from iter_json_items(path)
        return
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    yield lineno, f"invalid JSON ({e.msg})"
