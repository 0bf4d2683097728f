"""Old import paths of the flat layout (before the subsystem packages) keep working: importing one gives the
module that now lives at the new place, with a DeprecationWarning naming it. Modules that were split in
two or three answer each name from the part that now holds it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module -> its new home (one module: the same object under both names)
MOVED = {
    "rrm_jax.config": "rrm_jax.core.config",
    "rrm_jax.model": "rrm_jax.core.model",
    "rrm_jax.sharding": "rrm_jax.core.sharding",
    "rrm_jax.hf_io": "rrm_jax.core.hf_io",
    "rrm_jax.hub": "rrm_jax.core.hub",
    "rrm_jax.api": "rrm_jax.core.api",
    "rrm_jax.distributed": "rrm_jax.core.distributed",
    "rrm_jax.progress": "rrm_jax.core.progress",
    "rrm_jax.shipped": "rrm_jax.core.shipped",
    "rrm_jax.sampler_loop": "rrm_jax.sampler.loop",
    "rrm_jax.sampling": "rrm_jax.sampler.sampling",
    "rrm_jax.tournament": "rrm_jax.judge.tournament",
    "rrm_jax.scoring": "rrm_jax.evaluation.scoring",
    "rrm_jax.train_config": "rrm_jax.training.config",
    "rrm_jax.checkpoint": "rrm_jax.training.checkpoint",
    "rrm_jax.rl": "rrm_jax.training.rl",
    "rrm_jax.evaluation.answers": "rrm_jax.data.answers",  # below judge and training, which read answers too
}
# old module -> the modules its names now live in (and names that changed on the way)
SPLIT = {
    "rrm_jax.evaluate": (
        "rrm_jax.evaluation.run",
        "rrm_jax.evaluation.records",
        "rrm_jax.evaluation.report",
        "rrm_jax.evaluation.cli",
    ),
    "rrm_jax.eval_cli": ("rrm_jax.evaluation.config", "rrm_jax.evaluation.cli", "rrm_jax.data.records"),
    "rrm_jax.train": (
        "rrm_jax.training.trainer",
        "rrm_jax.training.loop",
        "rrm_jax.training.cli",
        "rrm_jax.training.config",
        "rrm_jax.training.step",
    ),
    "rrm_jax.train_step": ("rrm_jax.training.step",),
    "rrm_jax.data.train_pipeline": ("rrm_jax.training.data", "rrm_jax.core.tokenizers"),
    "rrm_jax.demo_task": ("rrm_jax.demo.task", "rrm_jax.core.tokenizers", "rrm_jax.judge.prompt"),
}
# old module -> {old name: its name now}
RENAMED = {
    "rrm_jax.evaluate": {"eval_cli": "eval_main", "judge_cli": "judge_main", "rank_cli": "rank_main"},
    "rrm_jax.train_step": {"state_shardings": "train_state_shardings"},
    "rrm_jax.data.train_pipeline": {"read_pairs": "read_training_pairs"},
    "rrm_jax.demo_task": {"Problem": "ArithmeticProblem", "build_tokenizer": "char_tokenizer"},
}
PUBLIC = {"rrm_jax.scoring"}  # part of the public API: no warning


def new_home(name: str) -> str | tuple[str, ...] | None:
    if name in SPLIT:
        return SPLIT[name]
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class _Split(types.ModuleType):
    def __getattr__(self, attr):
        name = RENAMED.get(self.__name__, {}).get(attr, attr)
        for place in self.__homes__:
            mod = importlib.import_module(place)
            if hasattr(mod, name):
                return getattr(mod, name)
        raise AttributeError(
            f"{self.__name__}.{attr} is gone; {self.__name__} now lives in {', '.join(self.__homes__)}"
        )


class _Loader(importlib.abc.Loader):
    def __init__(self, home):
        self.home = home

    def create_module(self, spec):
        if isinstance(self.home, tuple):
            mod = _Split(spec.name)
            mod.__homes__ = self.home
            return mod
        return None

    def exec_module(self, module):
        where = ", ".join(self.home) if isinstance(self.home, tuple) else self.home
        if module.__name__ not in PUBLIC:
            warnings.warn(f"{module.__name__} moved to {where}", DeprecationWarning, stacklevel=2)
        if not isinstance(self.home, tuple):
            # the import system hands back whatever sys.modules holds under the name once this returns
            sys.modules[module.__name__] = importlib.import_module(self.home)


class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        home = new_home(name) if name.startswith("rrm_jax.") else None
        return None if home is None else importlib.util.spec_from_loader(name, _Loader(home))


def install() -> None:
    if not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, Finder())  # before the path finder, which would load a second copy of a submodule
