"""``rrm-jax demo``: the synthetic task (``task``) and the end-to-end run (``runner``: warm start, GRPO, evaluation)."""

from rrm_jax.demo.runner import QUICK, Recipe, load_recipe, main, run

__all__ = ["QUICK", "Recipe", "load_recipe", "main", "run"]
