"""Training a judge: typed recipes (``config``), the functional step (``step``), the :class:`Trainer` (SFT and
GRPO updates), the recipe loop with checkpoints and resume (``loop``, ``checkpoint``), the input pipelines
(``data``), the GRPO maths (``rl``) and the ``train | plot`` commands (``cli``)."""

from rrm_jax.training.config import DataConfig, GRPOConfig, OptimConfig, TrainConfig, load_config
from rrm_jax.training.trainer import Trainer

__all__ = ["DataConfig", "GRPOConfig", "OptimConfig", "TrainConfig", "Trainer", "load_config", "train"]


def __getattr__(name):
    # The recipe loop reads its data through grain; the step, the Trainer and the configs need no grain, so an
    # accelerator image without it can still build and time them (rrm-jax bench device).
    if name == "train":
        from rrm_jax.training.loop import train

        return train
    raise AttributeError(f"module 'rrm_jax.training' has no attribute {name!r}")
