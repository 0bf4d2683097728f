"""Reading pair source files item by item: UTF-8 lines of JSONL (a bad byte is a bad item, not a crash), JSON
lists and parquet rows. What an item means is :mod:`rrm_jax.data.records`' business.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rrm_jax.core.errors import DataError

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def data_files(path: Path) -> list[Path]:
    """``path`` itself, or the data files below a directory (a hub dataset's snapshot), sorted."""
    return sorted(q for q in path.rglob("*") if q.suffix in DATA_SUFFIXES) if path.is_dir() else [path]


def hash_file(h, path: str | Path) -> None:
    """Feed a file's bytes into the hashlib object ``h`` in 1 MiB reads (data sets can be large)."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def fingerprint_file(path: str | Path) -> str:
    """Short content hash of an input file's bytes (of a directory's files, by their names below it): runs and
    records are keyed on what was read, not the name."""
    h, path = hashlib.sha256(), Path(path)
    for f in sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]:
        if f != path:
            h.update(str(f.relative_to(path)).encode())
        hash_file(h, f)
    return h.hexdigest()[:16]


class BadItem(Exception):
    """One bad input item (field, message); the reader's on_bad policy decides whether it raises or is skipped."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def iter_json_items(path: Path) -> Iterator[tuple[int, Any]]:
    """(line-or-item number, parsed item) for .jsonl (one object a line) or .json (a list of objects).

    A malformed JSONL line is yielded as a `BadItem` so the policy decides; a broken .json file raises.
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for n, line in text_lines(path):
            try:
                yield n, line if isinstance(line, BadItem) else json.loads(line)
            except json.JSONDecodeError as e:
                yield n, BadItem(None, f"malformed JSON ({e.msg} at column {e.colno})")
    elif suffix == ".json":
        raw = path.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        yield from enumerate(data, 1)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install 'rrm-jax[parquet]')") from None

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow's errors share no base class: any failure to read is bad input
            raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from None
        yield from enumerate(rows, 1)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (expected .jsonl, .json or .parquet)")


def text_lines(path: Path) -> Iterator[tuple[int, str | BadItem]]:
    """(line number, text) of the non-blank lines of a UTF-8 file; a line that is not UTF-8 comes as a `BadItem`
    naming the field that holds the bad byte when the line is otherwise JSON, for the policy to decide."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                if raw.strip():
                    yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    n,
                    BadItem(
                        _field_with_replacement(raw.decode("utf-8", errors="replace")),
                        f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
                    ),
                )


def _field_with_replacement(line: str) -> str | None:
    try:
        item = json.loads(line)
    except json.JSONDecodeError:
        return None
    fields = item.items() if isinstance(item, dict) else ()
    return next((k for k, v in fields if "\ufffd" in json.dumps(v, ensure_ascii=False)), None)
