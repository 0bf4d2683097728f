"""The records file of an evaluation: append-only JSONL, one comparison a line, flushed and fsynced per chunk.

A torn last line (a killed write) is cut off on load; duplicate or id-less records are refused with file:line,
except that a record replaces an earlier *error* record of its id (an item skipped, then judged by a resume);
``run-<setting>.json`` beside it keeps the run's settings and the fingerprint of the data it judges, so a resume
with other settings or other data is refused (or, with ``restart``, the old records are moved aside, never deleted);
a lock file stops two processes writing the same records (:func:`open_records` does all three for every writer).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from rrm_jax.core.distributed import barrier, is_main
from rrm_jax.core.hf_io import checkpoint_fingerprint
from rrm_jax.core.locks import exclusive
from rrm_jax.data.records import DataError
from rrm_jax.data.sources import fingerprint_file

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
            cut = raw.rfind(b"\n") + 1  # a write torn by a kill: drop the partial last line
            if repair:
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
            raw = raw[:cut]
        out, seen, at = [], {}, {}
        for n, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                raise DataError(
                    f"{self.path}:{n}: corrupt record ({why}); move the file away or pass --restart to start over"
                ) from None
            if not isinstance(rec, dict) or "id" not in rec:
                raise DataError(f"{self.path}:{n}:id: record without an id")
            if rec["id"] in seen:
                first = out[at[rec["id"]]]
                if first.get("error"):  # an item skipped with an error record, judged by a later run: it wins
                    out[at[rec["id"]]] = rec
                    seen[rec["id"]] = n
                    continue
                raise DataError(
                    f"{self.path}:{n}:id: duplicate record for id {rec['id']!r} (first at line "
                    f"{seen[rec['id']]}): two runs wrote to this file?"
                )
            seen[rec["id"]] = n
            at[rec["id"]] = len(out)
            out.append(rec)
        return out

    def append(self, records: Iterable[dict]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk fails in write/flush, naming no file (a torn line is cut on resume)
            if e.filename is None:
                raise OSError(e.errno, e.strerror, str(self.path)) from e
            raise


def lock(path: Path):
    return exclusive(path, EvalError(f"{path}: another process is writing these records"))


def check_meta(path: Path, meta: dict, have_records: bool, records: Path | None = None, *, write: bool = True) -> None:
    """Refuse to resume records written for other data (``DATA_KEYS``) or with other settings (``RESUME_KEYS``);
    then (``write``) record ``meta`` as the output's."""
    if path.exists():
        try:
            old = json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if not isinstance(old, dict):
            raise EvalError(
                f"{path}: corrupt run meta; cannot tell the records' settings or data; use another --out or --restart"
            )
        # a key newer than the records (split) cannot contradict them: compare it only where it was written
        diff = {
            k: (old.get(k), v)
            for k, v in meta.items()
            if k in RESUME_KEYS and old.get(k) != v and (k in old or k not in LATER_KEYS)
        }
        if "weights" in old and "weights" in meta:  # the weights' content decides, not the path's spelling
            diff.pop("model", None)
        data = {k: d for k, d in diff.items() if k in DATA_KEYS}
        if data:
            raise EvalError(
                f"{records or path}: holds judgements of other data ("
                + ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in data.items())
                + "); use another --out or --restart"
            )
        if diff:
            raise EvalError(
                f"{path}: this output holds a run with other settings "
                + ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
                + "; use another --out, the same settings or --restart"
            )
    elif have_records:
        raise EvalError(
            f"{path} is missing beside existing records; cannot tell their settings or data; "
            "use another --out or --restart"
        )
    if not write:
        return
    barrier("eval-meta-checked")  # multi-host: everyone has read the old meta before the main process rewrites it
    if is_main():
        path.write_text(json.dumps(meta, indent=1))


def check_writable(path: Path) -> None:
    """A records file must be a regular file (or none yet) in a directory that can be made: not a directory, not
    a device such as /dev/null (beside which its meta would be written)."""
    if path.exists() and not path.is_file():
        raise EvalError(f"--out {path}: not a regular file; the records need a file of their own")
    path.parent.mkdir(parents=True, exist_ok=True)  # an unwritable place fails here, before any model loads


def preflight(path: str | Path, meta: dict, *, restart: bool = False) -> None:
    """:func:`open_records`'s checks of an output, read-only, for a command to run before anything slow (the
    model's load) or written: a resume it would refuse is refused at once, leaving every file as it was."""
    path = Path(path)
    check_writable(path)
    if restart:  # the old records will be moved aside, not resumed
        return
    mp = meta_path(path)
    if not mp.exists():
        mp = _stem_meta(path) or mp
    check_meta(mp, meta, bool(RecordsFile(path).load(repair=False)), path, write=False)


RESUME_KEYS = (
    "dataset",
    "fingerprint",
    "split",
    "model",
    "votes",
    "max_think_tokens",
    "swap",
    "seed",
    "adaptive",
    "prompt",
    "record_version",
    "strategy",
    "n",
    "extract",
    "policy",
    "weights",
    "tokenizer",
    "sampling",
)
DATA_KEYS = ("dataset", "fingerprint", "split")  # what was judged, as opposed to how
LATER_KEYS = ("split", "weights", "tokenizer", "sampling")  # absent from older metas
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_new_tokens", "max_prompt_tokens", "dtype")


def judge_identity(opts) -> dict:
    """What decides a verdict besides the data and a run's own keys (votes, swap, seed, prompt, budget): the
    judge's weights and tokenizer by content, and its sampling settings. Every judging command (judge, rank,
    eval, bon, label) puts it in its records' meta, computed before the model loads, so a resume with another
    temperature or other weights at the same path is refused, and the same checkpoint spelled two ways is not."""
    return {
        "model": opts.model or None,
        "weights": _identity(opts.model) if opts.model else None,
        "tokenizer": _identity(opts.tokenizer) if opts.tokenizer else None,
        # the [sampling] keys beside the command's own two, flat as records of every version store them
        "sampling": {
            k: getattr(opts, k) if k in ("max_prompt_tokens", "dtype") else getattr(opts.sampling, k)
            for k in SAMPLING_KEYS
        },
    }


def _identity(spec: str) -> str:
    path = Path(spec)
    if path.is_dir():
        return checkpoint_fingerprint(path)
    if path.is_file():  # a model TOML
        return "file:" + fingerprint_file(path)
    return f"name:{spec}"  # a preset or generated tokenizer: its name (and the run's seed) is its content


def move_aside(path: Path) -> Path | None:
    """Rename ``path`` to the first free ``<name>.replaced-<n>`` (old results are never deleted)."""
    if not path.exists():
        return None
    n = 1
    while path.with_name(f"{path.name}.replaced-{n}").exists():
        n += 1
    dest = path.with_name(f"{path.name}.replaced-{n}")
    path.rename(dest)
    return dest


def meta_path(path: Path) -> Path:
    """The run meta beside a records file, named from its whole name: ``v.json`` and ``v.jsonl`` keep apart."""
    return path.with_name(path.name + ".meta.json")


def _stem_meta(path: Path) -> Path | None:
    """Outputs written before the meta was named from the whole name kept it at ``<stem>.meta.json``: that file,
    when it is this output's (no other output of that stem, ``v.json`` beside ``v.jsonl``, could own it)."""
    old = path.with_name(path.stem + ".meta.json")
    if meta_path(path).exists() or not old.exists() or not path.exists():
        return None
    owners = [p for p in path.parent.glob(f"{glob.escape(path.stem)}.*") if p.suffix in (".json", ".jsonl")]
    return old if [p for p in owners if p != old] == [path] else None


def _adopt_stem_meta(path: Path) -> None:
    """Rename an older output's :func:`_stem_meta` to :func:`meta_path`."""
    old = _stem_meta(path)
    if old is not None:
        old.rename(meta_path(path))


@contextlib.contextmanager
def open_records(path: str | Path, meta: dict, *, restart: bool = False):
    """Lock a records file, move it aside on ``restart``, check its meta and yield ``(RecordsFile, {id: record})``.

    Every writer of a records file goes through here, so none of them can skip the lock or the data check.
    Multi-host: only the main process locks, repairs, moves and writes; every process reads."""
    path = Path(path)
    check_writable(path)
    main = is_main()
    with lock(path.with_name(path.name + ".lock")) if main else contextlib.nullcontext():
        if restart:
            if main:
                for p in (path, meta_path(path)):
                    moved = move_aside(p)
                    if moved is not None:
                        print(f"--restart: moved {p} to {moved}", file=sys.stderr)
            barrier("eval-restart")
        if main:
            _adopt_stem_meta(path)
        rf = RecordsFile(path)
        done = {r["id"]: r for r in rf.load(repair=main)}
        check_meta(meta_path(path), meta, bool(done), path)
        yield rf, done


def load_records(out_dir: str | Path) -> dict[str, list[dict]]:
    """{setting tag: records} for every records file in ``out_dir`` (read-only; no repair)."""
    return {
        p.stem.removeprefix("records-"): RecordsFile(p).load(repair=False)
        for p in sorted(Path(out_dir).glob("records-*.jsonl"))
    }
