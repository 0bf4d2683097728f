"""The install a user does: every runtime import is a declared dependency, the package list is complete, and
the shipped presets/recipes resolve by name from anywhere (CI also installs the wheel and runs the demo)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from rrm_jax.core import shipped
from rrm_jax.core.config import ConfigError, resolve_config

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Imports that are optional by design: module -> (where it may be imported, the extra or reason).
OPTIONAL = {
    "torch": ("rrm_jax/benchmarks/", "benchmarks time transformers beside rrm-jax"),
    "tensorboard": ("rrm_jax/training/loop.py", "scalars when installed"),
    "pyarrow": ("rrm_jax/data/sources.py", "the [parquet] extra"),
    "tunix": ("rrm_jax/benchmarks/tunix_ref.py", "the [bench] extra: bench generate times Tunix beside rrm-jax"),
    "httpx": ("rrm_jax/benchmarks/serve.py", "the [bench-serve] extra: bench serve's HTTP client"),
    "libtpu": ("rrm_jax/plan/chips.py", "the [tpu] extra: rrm-jax plan compiles for TPU slices with it"),
    "fastapi": ("rrm_jax/serve/", "the [serve] extra: rrm-jax serve"),
    "pydantic": ("rrm_jax/serve/", "the [serve] extra (fastapi's own dependency)"),
    "uvicorn": ("rrm_jax/serve/", "the [serve] extra: rrm-jax serve"),
}
# transformers features rrm_jax uses and the package each needs at run time (transformers does not require them)
FEATURES = {"apply_chat_template": "jinja2", "snapshot_download": "huggingface_hub"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    """Normalised distribution names of PEP 508 requirement strings."""
    return {_norm(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}


def _declared() -> set[str]:
    return _names(PYPROJECT["project"]["dependencies"])


def _imports() -> dict[str, set[str]]:
    """top-level module -> files of rrm_jax that import it (at module level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "rrm_jax").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                found.setdefault(m.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_runtime_import_is_a_declared_dependency():
    dists = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = {}
    for mod, files in _imports().items():
        if mod in sys.stdlib_module_names or mod in ("rrm_jax", "__future__"):
            continue
        if mod in OPTIONAL:
            where, _ = OPTIONAL[mod]
            assert all(f.startswith(where) for f in files), f"{mod} (optional) imported outside {where}: {files}"
            continue
        names = {_norm(d) for d in dists.get(mod, [mod])}
        if not names & declared:
            missing[mod] = sorted(files)
    assert not missing, f"imported at run time but not in [project] dependencies: {missing}"


def test_transformers_features_bring_their_packages():
    source = "\n".join(p.read_text() for p in (ROOT / "rrm_jax").rglob("*.py"))
    for feature, package in FEATURES.items():
        if feature in source:
            assert _norm(package) in _declared(), f"rrm_jax uses {feature}, which needs {package} at run time"


def test_the_test_extra_is_not_a_runtime_dependency():
    test_extra = _names(PYPROJECT["project"]["optional-dependencies"]["test"])
    assert not test_extra & _declared() - {"pytest"}
    assert "torch" not in _declared()


def test_package_list_covers_the_tree():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rrm_jax").rglob("__init__.py")}
    assert tree <= listed, f"packages missing from pyproject [tool.setuptools] packages: {sorted(tree - listed)}"
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapped == {f"rrm_jax.recipes.{k}": k for k in shipped.KINDS}


def test_shipped_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped.find("tiny", "train") == ROOT / "train" / "tiny.toml"
    assert shipped.find("train/tiny.toml", "train") == ROOT / "train" / "tiny.toml"
    assert shipped.find("pandalm", "eval") == ROOT / "eval" / "pandalm.toml"
    assert shipped.find("eval/nope.toml", "eval") is None and shipped.find("a/b/c.toml", "eval") is None
    assert resolve_config("models/qwen2.5-0.5b.toml").hidden_size == 896
    (tmp_path / "tiny.toml").write_text("# mine\n")  # a file where the user is wins over the shipped one
    assert shipped.find("tiny.toml", "train") == Path("tiny.toml")
    with pytest.raises(ConfigError, match=r"nope: not a checkpoint directory.*presets: .*qwen2\.5-0\.5b"):
        resolve_config("nope")


def test_installed_layout_is_found_without_the_checkout(tmp_path, monkeypatch):
    """As in site-packages: no pyproject.toml beside the package, the files under rrm_jax/recipes/<kind>."""
    pkg = tmp_path / "site-packages" / "rrm_jax"
    (pkg / "recipes" / "models").mkdir(parents=True)
    (pkg / "recipes" / "models" / "tiny.toml").write_text((ROOT / "models" / "tiny.toml").read_text())
    monkeypatch.setattr(shipped, "_PACKAGE", pkg)
    monkeypatch.chdir(tmp_path)
    assert shipped.find("tiny", "models") == pkg / "recipes" / "models" / "tiny.toml"
    assert resolve_config("tiny") == resolve_config(ROOT / "models" / "tiny.toml")


def test_shipped_eval_recipe_with_absent_data_says_what_to_pass(tmp_path, monkeypatch, capsys):
    from rrm_jax.cli import main

    monkeypatch.chdir(tmp_path)  # ../shared is not beside this directory
    assert main(["eval", "pandalm", "--model", "tiny"]) == 2
    msg = capsys.readouterr().err.rstrip("\n")
    assert "\n" not in msg
    assert msg.startswith("rrm-jax eval: data='../shared/data/pandalm/testset-v1.json' (set by ")
    assert "pass data=PATH (the PandaLM test set" in msg


@pytest.mark.slow
def test_wheel_carries_the_presets_and_recipes(tmp_path):
    pytest.importorskip("setuptools", reason="builds the wheel offline with the installed setuptools")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("rrm_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in shipped.KINDS:
        for f in (ROOT / kind).glob("*.toml"):
            assert f"rrm_jax/recipes/{kind}/{f.name}" in names
    assert {f"rrm_jax/{p.relative_to(ROOT / 'rrm_jax')}" for p in (ROOT / "rrm_jax").rglob("*.py")} <= names
    assert "rrm_jax/core/cpu_matmul.cc" in names  # the CPU decode kernel's source, built at first use
