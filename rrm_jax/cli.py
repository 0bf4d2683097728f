"""`rrm-jax <command> ...`: a thin dispatcher. Each command lives beside the code it drives and takes argv."""

from __future__ import annotations

import importlib
import os
import signal
import sys

from rrm_jax.benchmarks import BENCHES
from rrm_jax.core import hugepages
from rrm_jax.core.errors import CheckpointError, ConfigError, DataError

# command -> "module:function(argv)"; imported lazily so `rrm-jax --help` does not import jax.
COMMANDS = {
    "demo": ("rrm_jax.demo:main", "train and evaluate a tiny RRM on a synthetic task (CPU, no downloads)"),
    "generate": ("rrm_jax.sampler.cli:cli", "sample completions from a model"),
    "judge": ("rrm_jax.evaluation.cli:judge_main", "judge a JSONL of pairs"),
    "rank": ("rrm_jax.evaluation.cli:rank_main", "rank candidates per query with a tournament"),
    "eval": ("rrm_jax.evaluation.cli:eval_main", "evaluate a judge on RewardBench / PandaLM / LLMBar / JSONL"),
    "bon": ("rrm_jax.evaluation.bon_cli:bon_main", "reward-guided best-of-N: a judge picks among candidates"),
    "label": ("rrm_jax.evaluation.label:label_main", "judge-labelled preference pairs for DPO from candidates"),
    "filter": ("rrm_jax.evaluation.filter:filter_main", "drop the training pairs a judge already gets right k of k"),
    "train": ("rrm_jax.training.cli:cli", "train an RRM with GRPO (or SFT, or a policy with DPO) from a recipe TOML"),
    "plot": ("rrm_jax.training.cli:plot_cli", "plot a training run's metrics"),
    "serve": ("rrm_jax.serve.cli:main", "serve a judge over HTTP: OpenAI-compatible, /v1/judge, /v1/rewards"),
    "plan": ("rrm_jax.plan.cli:main", "compile a recipe for a TPU slice (libtpu): memory per chip, FLOPs, MFU"),
    "bench": ("rrm_jax.benchmarks:cli", "benchmarks: " + " | ".join(BENCHES)),
}


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the console script or python -m, not a call from code
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"rrm-jax: unknown command {argv[0]!r}\n", file=sys.stderr)
        print("usage: rrm-jax <command> [args]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<10} {help_}")
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    if own_process:
        hugepages.reexec_if_wanted()
    # rrm-jax uses transformers for tokenizers and configs only: its "PyTorch was not found" advice is noise here
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    target, _ = COMMANDS[argv[0]]
    mod, fn = target.split(":")
    # SIGTERM (what schedulers and Kubernetes send) stops a command as Ctrl-C does, through the same unwinding:
    # records are flushed a chunk at a time and a checkpoint in flight is finished or left as orbax's temporary
    # (never taken for a checkpoint), so what was written stays whole and the same command resumes
    signal.signal(signal.SIGTERM, _stop)
    try:
        return getattr(importlib.import_module(mod), fn)(argv[1:]) or 0
    except (ConfigError, CheckpointError, DataError) as e:  # bad input: one line naming it, not a traceback
        print(f"rrm-jax {argv[0]}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only or full disk, a directory where a file goes: one line naming the path
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"rrm-jax {argv[0]}: {where}{e.strerror or e}; records and checkpoints written so far are whole",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt as e:
        how = e.args[0] if e.args else "SIGINT"
        print(
            f"rrm-jax {argv[0]}: stopped by {how}; what it wrote is whole, and the same command resumes",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)


def _stop(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
