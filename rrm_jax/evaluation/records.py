"""The records file of an evaluation: append-only JSONL, one comparison a line, flushed and fsynced per chunk.

A torn last line (a killed write) is cut off on load; duplicate or id-less records are refused with file:line;
``run-<setting>.json`` beside it keeps the run's settings so a resume with other settings is refused; a lock file
stops two processes writing the same records.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable

from rrm_jax.core.distributed import barrier, is_main
from rrm_jax.data.records import DataError

RECORD_VERSION = 1


class EvalError(RuntimeError):
    """An evaluation that cannot proceed as asked (settings mismatch, foreign records file, busy lock)."""


class RecordsFile:
    """Append-only JSONL of comparison records with crash-safe resume (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self, *, repair: bool = True) -> list[dict]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1        # a write torn by a kill: drop the partial last line
            if repair:
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
            raw = raw[:cut]
        out, seen = [], {}
        for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{self.path}:{n}: corrupt record ({e.msg}); "
                                "move the file away to start over") from None
            if not isinstance(rec, dict) or "id" not in rec:
                raise DataError(f"{self.path}:{n}:id: record without an id")
            if rec["id"] in seen:
                raise DataError(f"{self.path}:{n}:id: duplicate record for id {rec['id']!r} (first at line "
                                f"{seen[rec['id']]}): two runs wrote to this file?")
            seen[rec["id"]] = n
            out.append(rec)
        return out

    def append(self, records: Iterable[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def lock(path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no locking
        yield
        return
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EvalError(f"{path}: another process is writing these records") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            fcntl.flock(f, fcntl.LOCK_UN)


def check_meta(path: Path, meta: dict, have_records: bool) -> None:
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in meta.items() if k in RESUME_KEYS and old.get(k) != v}
        if diff:
            raise EvalError(f"{path}: this output holds a run with other settings "
                            + ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
                            + "; use another --out or the same settings")
    elif have_records:
        raise EvalError(f"{path} is missing beside existing records; cannot tell their settings")
    barrier("eval-meta-checked")  # multi-host: everyone has read the old meta before the main process rewrites it
    if is_main():
        path.write_text(json.dumps(meta, indent=1))


RESUME_KEYS = ("dataset", "fingerprint", "model", "votes", "max_think_tokens", "swap", "seed", "adaptive",
                "prompt", "record_version")


def load_records(out_dir: str | Path) -> dict[str, list[dict]]:
    """{setting tag: records} for every records file in ``out_dir`` (read-only; no repair)."""
    return {p.stem.removeprefix("records-"): RecordsFile(p).load(repair=False)
            for p in sorted(Path(out_dir).glob("records-*.jsonl"))}
