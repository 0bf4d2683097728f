"""The model presets and recipes that ship with rrm-jax (``models/``, ``train/``, ``eval/``).

The folders live at the top of the repository, where people read and edit them; the wheel carries copies as
package data under ``rrm_jax/recipes/<kind>/`` (pyproject's package-dir maps them). This module finds them
the same way from a source checkout, an editable install and an installed wheel, and turns a bare name
(``tiny``, ``eval/pandalm.toml``) into the shipped file when no such file exists where the user is.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("models", "train", "eval")
_PACKAGE = Path(__file__).resolve().parents[1]  # rrm_jax/


def shipped_dir(kind: str) -> Path:
    """The folder holding the shipped ``kind`` files (the checkout's own folder when run from source)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / kind).is_dir():
        return checkout / kind
    return _PACKAGE / "recipes" / kind


def names(kind: str) -> list[str]:
    """The shipped names of ``kind`` (file stems), sorted."""
    return sorted(p.stem for p in shipped_dir(kind).glob("*.toml"))


def find(spec: str | Path, kind: str) -> Path | None:
    """``spec`` as a path when it exists; else the shipped file it names, or None.

    ``tiny``, ``tiny.toml`` and ``train/tiny.toml`` all name ``train/tiny.toml`` for kind ``train``, so the
    README's commands work from any directory after ``pip install``. A file in the working directory wins.
    """
    p = Path(spec)
    if p.exists():
        return p
    parts = p.parts
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != kind):
        return None
    stem = p.name[:-5] if p.name.endswith(".toml") else p.name
    cand = shipped_dir(kind) / f"{stem}.toml"
    return cand if cand.is_file() else None


def missing_input(field: str, value: str, what: str, origin: str = "") -> str:
    """The one-line message for a data path that does not exist (e.g. a shipped recipe's ``../shared`` path,
    which exists only beside the development checkout)."""
    where = f" (set by {origin})" if origin else ""
    return f"{field}={value!r}{where}: no such file or directory; pass {field}=PATH ({what})"
