"""What a ``--model`` string names, decided in one place for every command, the Python API and the plan.

An existing directory is a checkpoint (HF layout) to load; a shipped preset name (``models/NAME.toml``) or a
``.toml`` / ``.json`` file is a model config to initialise at random; ``org/name[@revision]`` that is no local
path is a hub checkpoint. A weights file or anything else is a ConfigError saying what is accepted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from rrm_jax.core import hub, shipped
from rrm_jax.core.errors import ConfigError

WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    kind: Literal["checkpoint", "hub", "config"]
    where: str  # the directory, the hub id, or the config file (a preset resolved to its shipped TOML)


def model_spec(spec: str | Path) -> ModelSpec:
    """The one reading of a model spec (see the module docstring); a ConfigError for what names no model."""
    s, p = str(spec), Path(spec)
    if p.is_dir():
        return ModelSpec("checkpoint", s)
    if p.is_file() and p.suffix in WEIGHT_FILES:
        raise ConfigError(
            f"{s}: a file, not a checkpoint directory (pass the directory holding config.json), model TOML or preset"
        )
    found = shipped.find(s, "models")
    if found is not None:
        return ModelSpec("config", str(found))
    if p.suffix in (".toml", ".json"):
        return ModelSpec("config", s)  # reading it names the missing file
    if hub.is_hub_id(s):
        return ModelSpec("hub", s)
    raise ConfigError(
        f"{s}: not a checkpoint directory, hub id (org/name), model TOML or preset "
        f"(presets: {', '.join(shipped.names('models'))})"
    )
