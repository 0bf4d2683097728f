"""``rrm-jax demo``: the synthetic task (``task``), its recipe (``recipe``) and the end-to-end run (``runner``: warm
start, GRPO, evaluation)."""

from rrm_jax.demo.recipe import QUICK, Recipe, load_recipe
from rrm_jax.demo.runner import main, run

__all__ = ["QUICK", "Recipe", "load_recipe", "main", "run"]
