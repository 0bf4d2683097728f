"""One process of the multi-process training test (tests/test_distributed.py runs it as a subprocess).

argv: RUN_DIR. The device count and the JAX_* coordinator variables come from the environment."""

import sys
from pathlib import Path

from rrm_jax.training.config import load_config
from rrm_jax.training.loop import train

RECIPE = Path(__file__).resolve().parents[1] / "train" / "tiny.toml"


def reward(prompts, completions, batch):
    # a reward that varies inside each group, so every step updates the weights (a random model gives no verdicts)
    return [(c.text.count("a") % 3) - 1.0 for c in completions]


if __name__ == "__main__":
    distributed = "JAX_COORDINATOR_ADDRESS" in __import__("os").environ
    cfg = load_config(
        RECIPE,
        [
            f"run_dir={sys.argv[1]}",
            "steps=2",
            "save_every=2",
            "async_checkpoint=false",
            f"distributed={str(distributed).lower()}",
        ],
    )
    train(cfg, reward_fn=reward, progress=False)
