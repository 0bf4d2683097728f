"""The train step's jaxpr for every shipped recipe, traced on abstract arguments (nothing allocated).

``python tools/step_jaxprs.py OUT_DIR`` writes ``OUT_DIR/<recipe>.jaxpr`` and prints one sha256 per recipe. Run it
before and after a refactor of the training code and ``diff -r`` the two folders: equal files mean the same
program (the same maths, the same order, the same shardings), whatever moved in the Python around it.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hashlib  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rrm_jax.core import shipped  # noqa: E402
from rrm_jax.core.sharding import make_mesh  # noqa: E402
from rrm_jax.plan import programs  # noqa: E402
from rrm_jax.training.config import load_config  # noqa: E402
from rrm_jax.training.modes import mode_of  # noqa: E402

# no shipped recipe trains SFT alone (the demo's first phase does): the tiny recipe in that mode stands for it
VARIANTS = {"tiny-sft": ("tiny", ["mode='sft'"])}


def step_jaxpr(recipe: str, overrides=()) -> str:
    cfg = load_config(shipped.find(recipe, "train"), list(overrides))
    mesh = make_mesh(cfg.mesh, devices=jax.devices()[: 8 if -1 in cfg.mesh else None])
    model = programs.abstract_model(
        programs.model_config(cfg.model),
        mesh,
        jnp.dtype(cfg.dtype),
        jnp.dtype(cfg.compute_dtype),
        cfg.remat,
        cfg.attention,
    )
    total = cfg.steps * mode_of(cfg).updates_per_step(cfg)
    fn, batch = programs.update_step(cfg, model, total)
    state = programs.train_state(cfg, model, total)
    return str(fn.trace(state, batch).jaxpr)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "step_jaxprs")
    out.mkdir(parents=True, exist_ok=True)
    # `rrm-jax demo`'s recipe is not a training one (the demo builds its trainers itself)
    runs = {r: (r, []) for r in shipped.names("train") if r != "demo"} | VARIANTS
    for name, (recipe, overrides) in runs.items():
        text = step_jaxpr(recipe, overrides)
        (out / f"{name}.jaxpr").write_text(text)
        print(f"{name:22s} {hashlib.sha256(text.encode()).hexdigest()[:16]}  ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
