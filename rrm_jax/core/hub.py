"""Hugging Face hub ids wherever a checkpoint directory is accepted (``rrm_jax.load("org/name")``, ``--model``).

A local directory always wins over a hub id of the same spelling. Otherwise the id resolves through
``huggingface_hub.snapshot_download``, which honours the HF cache (``HF_HOME``/``HF_HUB_CACHE``) and
``HF_HUB_OFFLINE=1``. Only safetensors, JSON configs and tokenizer files are fetched: pickle weights
(``*.bin``, ``*.pt``) are never downloaded or read. A revision is ``revision=`` or ``org/name@revision``.
"""

from __future__ import annotations

import re
from pathlib import Path

from rrm_jax.core.errors import CheckpointError, DataError

ALLOW_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "merges.txt", "vocab.txt", "*.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")


def is_hub_id(spec: str | Path) -> bool:
    """``org/name`` or ``org/name@revision`` that is not an existing local path."""
    s = str(spec)
    return not Path(s).exists() and not s.endswith((".toml", ".json")) and bool(_HUB_ID.match(s))


def split_revision(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    repo, _, rev = spec.partition("@")
    if rev and revision and rev != revision:
        raise CheckpointError(f"{spec}: revision {rev!r} in the id differs from revision={revision!r}")
    return repo, rev or revision


def download_hint(repo: str) -> str:
    return (
        f"hf download {repo} --include '*.safetensors' '*.json' 'tokenizer*' "
        "(on a machine with network, then copy the HF cache or pass the directory)"
    )


DATA_PATTERNS = ["*.json", "*.jsonl", "*.parquet"]  # a benchmark's data files (fnmatch: any folder depth)


def resolve_dataset(spec: str, revision: str | None = None) -> Path:
    """The cached snapshot of hub dataset ``spec`` (``org/name[@revision]``), its data files only, downloaded when
    online: where a benchmark's own released files are read from when no local path is given."""
    repo, revision = split_revision(str(spec), revision)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        root = Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=DATA_PATTERNS))
    except RevisionNotFoundError:
        raise DataError(f"{repo}: revision {revision!r} not found on the hub") from None
    except RepositoryNotFoundError:
        raise DataError(f"{repo}: no such dataset repository on the hub (or it is private/gated)") from None
    except LocalEntryNotFoundError:
        raise DataError(
            f"{repo}: not in the Hugging Face cache and the hub cannot be reached (offline); on a machine with network "
            f"run hf download {repo} --repo-type dataset, then copy the HF cache or pass the files' path"
        ) from None
    if not any(root.rglob("*.json*")) and not any(root.rglob("*.parquet")):
        raise DataError(f"{repo}: the dataset repository holds no .json, .jsonl or .parquet files")
    return root


def data_path(spec: str) -> str:
    """A data argument as a local path: itself when it exists or is no hub id, else the dataset's snapshot."""
    return str(resolve_dataset(spec)) if not Path(spec).exists() and is_hub_id(spec) else spec


def resolve(spec: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint directory, or the cached snapshot of hub id ``spec`` (downloaded when online)."""
    path = Path(spec)
    if path.is_dir():
        return path
    if not is_hub_id(spec):
        raise CheckpointError(f"{spec}: no such checkpoint directory (nor a hub id of the form org/name)")
    repo, revision = split_revision(str(spec), revision)
    from huggingface_hub import (
        snapshot_download,  # here, not at the top: local loads never import it
    )
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        root = Path(snapshot_download(repo, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo}: revision {revision!r} not found on the hub") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo}: no such model repository on the hub (or it is private/gated)") from None
    except LocalEntryNotFoundError:
        at = f" at revision {revision!r}" if revision else ""
        raise CheckpointError(
            f"{repo}{at}: not in the Hugging Face cache and the hub cannot be reached "
            f"(offline); download it first: {download_hint(repo)}"
        ) from None
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{repo}: the repository has no config.json; rrm-jax loads HF transformers checkpoints")
    if not any(root.glob("*.safetensors")):
        raise CheckpointError(
            f"{repo}: the repository has no *.safetensors weights; rrm-jax never loads pickle "
            "checkpoints (pytorch_model.bin, *.pt): convert them to safetensors first"
        )
    return root
