"""``rrm-jax train RECIPE [key=value ...]`` and ``rrm-jax plot RUN_DIR`` (metric curves -> curves.png)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rrm_jax.core import shipped
from rrm_jax.training.config import load_config
from rrm_jax.training.loop import read_metrics, train


def cli(argv: list[str]) -> int:
    """``rrm-jax train RECIPE.toml [key=value ...]``."""
    ap = argparse.ArgumentParser(
        prog="rrm-jax train", description="train an RRM with GRPO (or SFT, or a policy with DPO) from a recipe"
    )
    ap.add_argument("recipe", help="a recipe TOML, or the name of a shipped one (tiny, rrm-7b, rrm-32b)")
    ap.add_argument("overrides", nargs="*", help="key=value or section.key=value (e.g. steps=10 optim.lr=1e-6)")
    args = ap.parse_args(argv)
    recipe = shipped.find(args.recipe, "train")
    if recipe is None:
        print(
            f"rrm-jax train: recipe {args.recipe}: no such file (shipped recipes: "
            f"{', '.join(n for n in shipped.names('train') if n != 'demo')})",
            file=sys.stderr,
        )
        return 2
    cfg = load_config(recipe, args.overrides)  # a ConfigError is printed as one line by rrm_jax.cli
    summary = train(cfg)
    last = summary["last"]
    print(
        json.dumps(
            {k: summary[k] for k in ("steps", "resumed_from", "seconds", "skipped_total")}
            | {"last": {k: last.get(k) for k in ("reward_mean", "accuracy", "loss", "kl") if k in last}}
        )
    )
    return 0


PLOTS = (
    ("reward_mean", "reward"),
    ("accuracy", "verdict accuracy"),
    ("kl", "KL to reference"),
    ("response_len", "response length (tokens)"),
    ("loss", "loss"),
    ("entropy", "entropy"),
)


def plot_cli(argv: list[str]) -> int:
    """``rrm-jax plot RUN_DIR``: reward, accuracy, KL and response-length curves -> RUN_DIR/curves.png."""
    ap = argparse.ArgumentParser(prog="rrm-jax plot")
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    path = Path(args.run_dir) / "metrics.jsonl"
    if not path.exists():
        print(f"rrm-jax plot: {path} does not exist", file=sys.stderr)
        return 2
    rows = read_metrics(path)  # a torn last line is skipped; a corrupt one before it is a one-line DataError
    out = Path(args.out or Path(args.run_dir) / "curves.png")
    plot_metrics(rows, out)
    print(out)
    return 0


def plot_metrics(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in PLOTS if any(k in r for r in rows)]
    ncols = min(3, max(len(panels), 1))
    nrows = -(-max(len(panels), 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
