"""The common pairwise record and the readers that turn benchmark files into it.

Every benchmark becomes a list of :class:`PairRecord` ``{id, query, response_a, response_b, label, subset,
source}`` with ``label`` 0 (``a`` better), 1 (``b`` better) or None (tie / unlabeled). Besides RewardBench,
PandaLM, LLMBar and a generic JSONL:

* **JudgeBench** (``dataset=judgebench``, its ``data/*.jsonl``): rows ``{pair_id, original_id, source, question,
  response_A, response_B, label}`` with label ``"A>B"`` / ``"B>A"``. A pair's subset is its ``source`` (e.g.
  ``mmlu-pro-biology``); the score groups them by JudgeBench's four source prefixes.
* **RM-Bench** (``dataset=rmbench``, its ``total_dataset.json`` or a domain file): items ``{id, prompt, chosen[3],
  rejected[3], domain}``, the three responses of each side in the styles concise, detailed plain and detailed
  markdown. Each item becomes its 3 x 3 chosen-vs-rejected pairs, ids ``<id>/c<i>r<j>`` (chosen style ``i``
  against rejected style ``j``, label 0: chosen is ``a``); the subset is the domain (``chat``, ``math``, ``code``,
  ``safety-refuse``, ``safety-response``).

Bad-input policy (one rule for every reader):

* ``on_bad="raise"`` (default): the first bad item raises :class:`DataError` naming ``file:line:field``.
* ``on_bad="skip"``: bad items are left out of the records but each one is kept as a :class:`Problem`
  (file, line, field, message) in :attr:`PairSet.problems`; the evaluation summary reports their count
  and the list, so nothing disappears silently.

"Bad" means: a line that is not valid JSON (or not an object), a missing or wrongly typed required
field, a label outside the format's label set, or a duplicate id. A file that cannot be opened or whose
top level has the wrong shape always raises.

Empty (whitespace-only) texts: in the generic JSONL (user data) an empty query or response is bad. In the
published benchmarks they are real items with gold labels (PandaLM's test set has 54 empty responses and
one empty instruction, LLMBar's Processed_LLMEval2 one empty response), so those readers keep them (removing
them would change the benchmark) and list each in :attr:`PairSet.notes`, which the summary counts.
PandaLM's file also holds 6 responses stored as JSON booleans (``true`` for the text "True"); they are read
as ``str(value)``, as the authors' string formatting did, and noted too.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from rrm_jax.core.errors import DataError
from rrm_jax.data.sources import BadItem as _Bad
from rrm_jax.data.sources import data_files
from rrm_jax.data.sources import iter_json_items as _iter_json_items
from rrm_jax.data.sources import text_lines as _text_lines

OnBad = Literal["raise", "skip"]
KINDS = ("rewardbench", "pandalm", "llmbar", "judgebench", "rmbench", "jsonl")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A bad input item that was skipped (``on_bad="skip"``) instead of raising."""

    path: str
    line: int  # 1-based line for JSONL; 1-based item number for JSON arrays / parquet rows
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" + (f":{self.field}" if self.field else "")
        return f"{where}: {self.message}"


@dataclasses.dataclass(frozen=True)
class PairRecord:
    id: str
    query: str
    response_a: str
    response_b: str
    label: int | None  # 0 -> response_a better, 1 -> response_b better, None -> tie / unknown
    subset: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairRecord:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass
class PairSet:
    records: list[PairRecord]
    problems: list[Problem]  # skipped bad items
    notes: list[Problem] = dataclasses.field(default_factory=list)  # kept items worth a mention

    def __len__(self) -> int:
        return len(self.records)

    def extend(self, other: PairSet) -> None:
        self.records += other.records
        self.problems += other.problems
        self.notes += other.notes


# ---------------------------------------------------------------------------------------------- helpers
class _Ctx:
    """Per-item reading context: how strict to be about texts, and where to put notes."""

    def __init__(self, *, strict_text: bool, coerce_scalars: bool = False):
        self.strict_text, self.coerce_scalars = strict_text, coerce_scalars
        self.notes: list[tuple[str, str]] = []

    def text(self, item: dict, key: str) -> str:
        if key not in item:
            raise _Bad(key, "missing field")
        v = item[key]
        if self.coerce_scalars and isinstance(v, (bool, int, float)):
            self.notes.append((key, f"non-string value {v!r} read as {str(v)!r}"))
            v = str(v)
        if not isinstance(v, str):
            raise _Bad(key, f"expected a string, got {type(v).__name__}")
        if (why := _not_text(v)) is not None:
            raise _Bad(key, why)
        if not v.strip():
            if self.strict_text:
                raise _Bad(key, "empty")
            self.notes.append((key, "empty text (kept: part of the benchmark)"))
        return v


def _collect(
    path: Path,
    items: Iterable[tuple[int, Any]],
    convert: Callable[[int, dict, _Ctx], PairRecord | list[PairRecord]],  # a list: the item's several pairs
    on_bad: OnBad,
    *,
    strict_text: bool,
    coerce_scalars: bool = False,
) -> PairSet:
    if on_bad not in ("raise", "skip"):
        raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")
    records: list[PairRecord] = []
    problems: list[Problem] = []
    notes: list[Problem] = []
    seen: dict[str, int] = {}
    for n, item in items:
        ctx = _Ctx(strict_text=strict_text, coerce_scalars=coerce_scalars)
        try:
            if isinstance(item, _Bad):
                raise item
            if not isinstance(item, dict):
                raise _Bad(None, f"expected a JSON object, got {type(item).__name__}")
            got = convert(n, item, ctx)
            recs = got if isinstance(got, list) else [got]
            for rec in recs:
                if rec.id in seen:
                    raise _Bad("id", f"duplicate id {rec.id!r} (first at {seen[rec.id]})")
        except _Bad as bad:
            p = Problem(str(path), n, bad.field, bad.message)
            if on_bad == "raise":
                raise DataError(f"{p} (pass on_bad='skip' / --on-bad skip to skip and record bad items)") from None
            problems.append(p)
            continue
        seen.update((rec.id, n) for rec in recs)
        records += recs
        notes += [Problem(str(path), n, f, m) for f, m in ctx.notes]
    return PairSet(records, problems, notes)


def _path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    return p


# ---------------------------------------------------------------------------------------------- readers
def read_rewardbench(path: str | Path, *, on_bad: OnBad = "raise") -> PairSet:
    """RewardBench `filtered` split rows ``{prompt, chosen, rejected, subset, id}`` (.jsonl/.json/.parquet,
    or a directory of .parquet shards as the hub stores them). ``chosen`` becomes ``a`` (label 0); the
    evaluation randomises the order shown to the judge."""
    p = _path(path)
    if p.is_dir():
        # a hub snapshot may also hold other splits fetched earlier (raw-*.parquet): the filtered shards win
        files = sorted(p.glob("filtered*.parquet")) or sorted(p.glob("*.parquet")) + sorted(p.glob("*.jsonl"))
    else:
        files = [p]
    if not files:
        raise DataError(f"{p}: directory holds no .parquet or .jsonl files")

    def convert(n: int, item: dict, c: _Ctx) -> PairRecord:
        if "id" not in item:
            raise _Bad("id", "missing field")
        rid = item["id"]
        if isinstance(rid, bool) or not isinstance(rid, (int, str)):
            raise _Bad("id", f"expected an int or string, got {type(rid).__name__}")
        subset = c.text(item, "subset")
        if not subset.strip():
            raise _Bad("subset", "empty")
        return PairRecord(
            str(rid), c.text(item, "prompt"), c.text(item, "chosen"), c.text(item, "rejected"), 0, subset, "rewardbench"
        )

    out = PairSet([], [])
    for f in files:
        out.extend(_collect(f, _iter_json_items(f), convert, on_bad, strict_text=False))
    _check_unique(out.records, p)
    return out


def pandalm_query(instruction: str, input_: str) -> str:
    """PandaLM's query: the instruction, plus ``"\\n" + input`` when the input is non-empty."""
    return instruction + "\n" + input_ if input_.strip() else instruction


def pandalm_gold(annotations: Iterable[int]) -> int | None:
    """Majority of the annotators' {0 tie, 1, 2} -> PairRecord label (None, 0, 1); no majority -> tie."""
    top = Counter(annotations).most_common()
    winner = top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else 0
    return {0: None, 1: 0, 2: 1}[winner]


def read_pandalm(path: str | Path, *, on_bad: OnBad = "raise") -> PairSet:
    """PandaLM test set (testset-v1.json): gold = majority of annotator1..3 (0 tie, 1, 2)."""
    p = _path(path)

    def convert(n: int, item: dict, c: _Ctx) -> PairRecord:
        anns = []
        for k in ("annotator1", "annotator2", "annotator3"):
            if k not in item:
                raise _Bad(k, "missing field")
            if item[k] not in (0, 1, 2) or isinstance(item[k], bool):
                raise _Bad(k, f"expected 0 (tie), 1 or 2, got {item[k]!r}")
            anns.append(item[k])
        input_ = item.get("input", "")
        if not isinstance(input_, str):
            raise _Bad("input", f"expected a string, got {type(input_).__name__}")
        rid = item.get("idx", n - 1)
        return PairRecord(
            str(rid),
            pandalm_query(c.text(item, "instruction"), input_),
            c.text(item, "response1"),
            c.text(item, "response2"),
            pandalm_gold(anns),
            str(item.get("motivation_app", "")),
            "pandalm",
        )

    return _collect(p, _iter_json_items(p), convert, on_bad, strict_text=False, coerce_scalars=True)


LLMBAR_FILES = ("Natural", "Adversarial_Neighbor", "Adversarial_GPTInst", "Adversarial_GPTOut", "Adversarial_Manual")


def read_llmbar(path: str | Path, *, on_bad: OnBad = "raise") -> PairSet:
    """LLMBar ``{input, output_1, output_2, label in {1, 2}}``. ``path`` is one file (subset = its stem)
    or a directory: then the five LLMBar files (Natural + 4 Adversarial) when present, else every .json."""
    p = _path(path)
    if p.is_dir():
        files = [p / f"{name}.json" for name in LLMBAR_FILES if (p / f"{name}.json").exists()]
        files = files or sorted(p.glob("*.json"))
        if not files:
            raise DataError(f"{p}: directory holds no LLMBar .json files")
    else:
        files = [p]
    out = PairSet([], [])
    for f in files:
        subset = f.stem

        def convert(n: int, item: dict, c: _Ctx, subset=subset) -> PairRecord:
            label = item.get("label", "<missing>")
            if label not in (1, 2) or isinstance(label, bool):
                raise _Bad("label", "missing field" if label == "<missing>" else f"expected 1 or 2, got {label!r}")
            return PairRecord(
                f"{subset}-{n - 1}",
                c.text(item, "input"),
                c.text(item, "output_1"),
                c.text(item, "output_2"),
                label - 1,
                subset,
                "llmbar",
            )

        out.extend(_collect(f, _iter_json_items(f), convert, on_bad, strict_text=False))
    return out


_JSONL_LABELS: dict[Any, int | None] = {0: 0, 1: 1, None: None, "a": 0, "b": 1, "tie": None}


def read_pairs_jsonl(path: str | Path, *, on_bad: OnBad = "raise", require_label: bool = True) -> PairSet:
    """Generic pairs ``{query, response_a, response_b, label, [id], [subset]}``; label 0/"a", 1/"b", or
    null/"tie". With ``require_label=False`` (everyday judging) a missing label reads as None."""
    p = _path(path)

    def convert(n: int, item: dict, c: _Ctx) -> PairRecord:
        if "label" not in item and require_label:
            raise _Bad("label", "missing field")
        label = item.get("label")
        # a list or object label is unhashable: test its type before looking it up
        if isinstance(label, bool) or not isinstance(label, (int, str, type(None))) or label not in _JSONL_LABELS:
            raise _Bad("label", f"expected 0, 1, null, 'a', 'b' or 'tie', got {label!r}")
        rid = _id(item, "id", default=f"{p.stem}-{n}")
        subset = item.get("subset", "")
        if not isinstance(subset, str):
            raise _Bad("subset", f"expected a string, got {type(subset).__name__}")
        return PairRecord(
            rid,
            c.text(item, "query"),
            c.text(item, "response_a"),
            c.text(item, "response_b"),
            _JSONL_LABELS[label],
            subset,
            "jsonl",
        )

    return _collect(p, _iter_json_items(p), convert, on_bad, strict_text=True)


def _check_unique(records: list[PairRecord], where: Path) -> None:
    dup = [k for k, c in Counter(r.id for r in records).items() if c > 1]
    if dup:
        raise DataError(f"{where}: duplicate ids across files: {dup[:5]}")


# ------------------------------------------------------------------ the judge benchmarks released after RewardBench
JUDGEBENCH_LABELS = {"A>B": 0, "B>A": 1}
RMBENCH_STYLES = ("concise", "detailed_plain", "detailed_markdown")
_RMBENCH_ID = re.compile(r"^(.*)/c([0-2])r([0-2])$")


def _id(item: dict, key: str, *, default: str | None = None) -> str:
    """An item's id: an int or a string (``default`` where it may be absent)."""
    if key not in item:
        if default is not None:
            return default
        raise _Bad(key, "missing field")
    v = item[key]
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise _Bad(key, f"expected an int or string, got {type(v).__name__}")
    return str(v)


def _each_file(p: Path, convert, on_bad: OnBad) -> PairSet:
    """``convert`` over one data file, or over every .jsonl / .json / .parquet file below a directory (a hub
    dataset's snapshot), ids unique across them."""
    files = data_files(p)
    if not files:
        raise DataError(f"{p}: directory holds no .jsonl, .json or .parquet files")
    out = PairSet([], [])
    for f in files:
        out.extend(_collect(f, _iter_json_items(f), convert, on_bad, strict_text=False))
    _check_unique(out.records, p)
    return out


def read_judgebench(path: str | Path, *, on_bad: OnBad = "raise") -> PairSet:
    p = _path(path)

    def convert(n: int, item: dict, c: _Ctx) -> PairRecord:
        label = item.get("label")
        if not isinstance(label, str) or label not in JUDGEBENCH_LABELS:
            raise _Bad("label", f"expected 'A>B' or 'B>A', got {label!r}")
        source = c.text(item, "source")
        return PairRecord(
            _id(item, "pair_id"),
            c.text(item, "question"),
            c.text(item, "response_A"),
            c.text(item, "response_B"),
            JUDGEBENCH_LABELS[label],
            source,
            "judgebench",
        )

    return _each_file(p, convert, on_bad)


def read_rmbench(path: str | Path, *, on_bad: OnBad = "raise") -> PairSet:
    p = _path(path)

    def convert(n: int, item: dict, c: _Ctx) -> list[PairRecord]:
        rid, prompt, domain = _id(item, "id"), c.text(item, "prompt"), c.text(item, "domain")
        sides = {}
        for key in ("chosen", "rejected"):
            v = item.get(key)
            if not isinstance(v, list) or len(v) != len(RMBENCH_STYLES):
                raise _Bad(key, f"expected a list of {len(RMBENCH_STYLES)} responses ({', '.join(RMBENCH_STYLES)})")
            sides[key] = [c.text({key: x}, key) for x in v]
        return [
            PairRecord(f"{rid}/c{i}r{j}", prompt, chosen, rejected, 0, domain, "rmbench")
            for i, chosen in enumerate(sides["chosen"])
            for j, rejected in enumerate(sides["rejected"])
        ]

    return _each_file(p, convert, on_bad)


def rmbench_cell(record_id: str) -> tuple[str, int, int] | None:
    """``<id>/c<i>r<j>`` -> (item id, chosen style i, rejected style j); None for another id."""
    m = _RMBENCH_ID.match(record_id)
    return (m[1], int(m[2]), int(m[3])) if m else None


READERS: dict[str, Callable[..., PairSet]] = {
    "rewardbench": read_rewardbench,
    "pandalm": read_pandalm,
    "llmbar": read_llmbar,
    "judgebench": read_judgebench,
    "rmbench": read_rmbench,
    "jsonl": read_pairs_jsonl,
}


def read_pairs(kind: str, path: str | Path, *, on_bad: OnBad = "raise") -> PairSet:
    """Read any supported benchmark file into PairRecords (see the module docstring for the bad-input policy)."""
    if kind not in READERS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    return READERS[kind](path, on_bad=on_bad)


def download_rewardbench(cache_dir: str | Path | None = None) -> Path:
    """Fetch the hub's allenai/reward-bench `filtered` split (parquet) and return its directory.

    Needs internet; uses ``huggingface_hub`` (installed with transformers)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - transformers always brings it
        raise DataError("downloading RewardBench needs huggingface_hub (pip install huggingface_hub)") from e
    try:
        root = snapshot_download(
            "allenai/reward-bench",
            repo_type="dataset",
            allow_patterns=["data/filtered*"],
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except Exception as e:
        raise DataError(
            f"could not download allenai/reward-bench ({type(e).__name__}: {e}); download the "
            "`filtered` split yourself and pass its parquet/JSONL file with --data"
        ) from e
    return Path(root) / "data"


def _not_text(v: str) -> str | None:
    """Why a decoded JSON string is no text: JSON's ``\\ud800`` escapes give lone surrogates, which no tokenizer
    and no UTF-8 file can take."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"a lone surrogate ({v[e.start]!r}) at character {e.start}: not text"
    return None


def read_queries(path: str | Path) -> list[dict]:
    """JSONL of {query, candidates: [>= 2 strings], [id]} with file:line:field errors."""
    out, seen = [], set()
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    for n, line in _text_lines(p):
        if isinstance(line, _Bad):
            raise DataError(str(Problem(str(p), n, line.field, line.message)))
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
        for field, text in [("query", item["query"])] + [(f"candidates[{i}]", x) for i, x in enumerate(c)]:
            if (why := _not_text(text)) is not None:
                raise DataError(f"{p}:{n}:{field}: {why}")
        qid = item.get("id", f"{p.stem}-{n}")
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise DataError(f"{p}:{n}:id: expected an int or string, got {type(qid).__name__}")
        qid = str(qid)
        if qid in seen:
            raise DataError(f"{p}:{n}:id: duplicate id {qid!r}")
        seen.add(qid)
        out.append({"id": qid, "query": item["query"], "candidates": c})
    return out
