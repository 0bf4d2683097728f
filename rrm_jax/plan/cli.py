"""``rrm-jax plan RECIPE --topology v5p-64 [--set k=v ...] [--json PATH|-]``: print the plan as a table and one
fits / does-not-fit line; ``--json`` writes the whole plan (``-``: stdout, the table then goes to stderr)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="rrm-jax plan",
        description="compile a training recipe for a TPU slice ahead "
        "of time (libtpu, no TPU needed): per-chip memory, FLOPs, roofline step time, MFU",
    )
    ap.add_argument("recipe", help="a train recipe TOML or a shipped name (tiny, rrm-7b, rrm-32b, policy-7b-rrm32b)")
    ap.add_argument(
        "--topology",
        required=True,
        help="v4-32, v5p-64, v5e-16 (v5litepod-16), v6e-8, libtpu's v5e:4x4, or cpu-N (N fake host devices, no libtpu)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override, repeatable (e.g. --set optim.micro_batches=32)",
    )
    ap.add_argument(
        "--only",
        default="update,rollout,judge",
        help="the parts to compile, comma-separated "
        "(update, rollout, judge); a partial plan never claims the recipe fits",
    )
    ap.add_argument("--json", metavar="PATH", help="write the plan as JSON to PATH, or - for stdout")
    args = ap.parse_args(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    if args.topology.lower().startswith("cpu-") and "device_count" not in flags:  # read when jax's backend starts
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.topology[4:]}".strip()
    # the host backend is all planning needs; with libtpu installed jax would otherwise look for a local TPU
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from rrm_jax.plan import run

    out = sys.stderr if args.json == "-" else sys.stdout
    result = run.plan(
        args.recipe,
        args.topology,
        args.overrides,
        only=tuple(args.only.split(",")),
        progress=lambda m: print(m, file=sys.stderr),
    )
    print_table(result, out)
    print(run.fits_line(result), file=out)
    if args.json == "-":
        json.dump(result, sys.stdout, indent=1)
        print()
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    # exit 1 when it does not fit; a partial plan (--only) exits 0 when the programs it compiled fit
    return 0 if result["programs_fit"] else 1


def print_table(p: dict, file) -> None:
    from rich.console import Console
    from rich.table import Table

    big = max(row["peak_bytes"] for row in p["programs"]) >= 1 << 30
    unit, scale = ("GiB", 1 << 30) if big else ("MiB", 1 << 20)
    gib = lambda b: f"{b / scale:.2f}"
    r = p["recipe"]
    title = (
        f"{r['model']} ({r['params'] / 1e9:.2f}B, {r['mode']}) on {p['topology']}: {p['chips']} x {p['chip']}, "
        f"mesh {r['mesh']}, attention {r['attention']}"
        + (f", residual split over {r['residual']}" if r["residual"] else "")
    )
    t = Table(
        title=title,
        caption=f"{unit} per chip; time = roofline per chip (closed-form FLOPs and bytes), "
        "XLA FLOPs as cost_analysis() reports them (a loop body once)",
    )
    for col in (
        "program",
        "calls/step",
        "args",
        "out",
        "temp",
        "other live",
        "peak",
        "XLA GFLOP",
        "GFLOP",
        "ms/call",
        "bound",
        "s/step",
    ):
        t.add_column(col, justify="left" if col == "program" else "right")
    for row in p["programs"]:
        t.add_row(
            row["program"],
            f"{row['calls_per_step']:g}",
            gib(row["argument_bytes"]),
            gib(row["output_bytes"] - row["alias_bytes"]),
            gib(row["temp_bytes"]),
            gib(row["resident_bytes"]),
            gib(row["peak_bytes"]),
            f"{row['xla_flops'] / 1e9:.1f}",
            f"{row['flops'] / 1e9:.1f}",
            f"{row['seconds_per_call'] * 1e3:.2f}",
            row["bound"],
            f"{row['seconds_per_step']:.2f}",
        )
    console = Console(file=file, width=160)
    console.print(t)
    for row in p["programs"]:
        if row.get("host_temp_bytes"):
            console.print(
                f"{row['program']}: {gib(row['host_temp_bytes'])} GiB per chip in host memory, beside the peak "
                '(remat = "offload": what the backward reuses, copied out and back once per micro-batch, '
                f"{row['host_bytes_per_s'] / 1e9:.1f} GB/s per chip of host link at the roofline time)"
            )
    console.print(
        f"update MFU (6 N tokens / peak x time): {p['update_mfu']:.1%}; step (rollout batch) "
        f"~{p['step_seconds']:.1f} s at the roofline; compile seconds {p['compile_seconds']}"
    )
