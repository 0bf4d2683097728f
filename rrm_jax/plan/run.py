"""``plan(recipe, topology)``: compile a recipe's programs for a slice and turn the figures into a verdict.

Per chip the peak is taken over the programs a step runs, each as its own arguments, outputs and temporaries
plus the buffers that stay alive around it (:func:`residents`): the train state (fp32 master + AdamW moments),
the model's initial params the Trainer keeps, the compute-dtype reference and rollout copies, the judge.
Time is a roofline per program, ``max(flops / peak, bytes / bandwidth)`` per chip, times its calls per step.
"""

from __future__ import annotations

import time

import jax.numpy as jnp

from rrm_jax.core import shipped
from rrm_jax.core.errors import ConfigError
from rrm_jax.core.ops import form_name
from rrm_jax.core.sharding import make_mesh, mesh_misfit
from rrm_jax.plan import chips, roofline
from rrm_jax.plan.programs import (
    abstract_model,
    cast,
    device_bytes,
    judge_requests,
    model_config,
    rollout_programs,
    train_shapes,
    train_state,
    update_programs,
)
from rrm_jax.training.config import TrainConfig, load_config
from rrm_jax.training.modes import mode_of

GIB = 1 << 30


def residents(cfg: TrainConfig, model, state, judge) -> dict[str, int]:
    """Per-device bytes of every long-lived buffer of a run (0 where the recipe has none)."""
    cdt, mode = jnp.dtype(cfg.compute_dtype), mode_of(cfg)
    same = jnp.dtype(cfg.dtype) == cdt
    params = device_bytes(state.params)
    return {
        "train_state": device_bytes(state),
        "params": params,
        # Trainer.model keeps the params it was built from; the reference and the rollout copy are those (or
        # the live params) cast to the compute dtype, the same arrays when the dtypes already agree
        "initial_params": device_bytes(model.state),
        "reference": 0 if same or not mode.reference(cfg) else device_bytes(cast(state.params, cdt)),
        "rollout_copy": 0 if same or not mode.samples else device_bytes(cast(state.params, cdt)),
        "judge": device_bytes(judge.state) if judge is not None else 0,
    }


PARTS = ("update", "rollout", "judge")


def plan(recipe: str | None, topology: str, overrides=(), *, only=PARTS, progress=print) -> dict:
    """Compile ``recipe`` (a train TOML, shipped name, with ``key=value`` overrides) for ``topology``
    (``v5p-64``, ``cpu-8`` ...); returns the plan as a JSON-able dict. ``only``: the parts to compile (a
    partial plan says so in ``parts`` and cannot claim to fit)."""
    bad = set(only) - set(PARTS)
    if bad or not only:
        raise ConfigError(f"--only {','.join(only)}: choose among {', '.join(PARTS)}")
    topo = chips.parse(topology)
    path = shipped.find(recipe, "train") if recipe is not None else None
    if recipe is not None and path is None:
        raise ConfigError(
            f"recipe {recipe}: no such file (shipped recipes: "
            f"{', '.join(n for n in shipped.names('train') if n != 'demo')})"
        )
    cfg = load_config(path, list(overrides))
    devices = chips.devices(topo)
    why = mesh_misfit(cfg.mesh, len(devices))
    if why:
        name = path.stem if path is not None else "the default recipe"
        raise ConfigError(f"{name} does not fit {topo.name}: its mesh={list(cfg.mesh)} {why}")
    mesh = make_mesh(cfg.mesh, devices=devices)
    dt, cdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.compute_dtype)
    mcfg = model_config(cfg.model)
    model = abstract_model(mcfg, mesh, dt, cdt, cfg.remat, cfg.attention, cfg.sharding_rules)
    judge, mode = None, mode_of(cfg)
    if mode.judged:  # the judge only decodes: loaded in the compute dtype on the policy's mesh (judge_rewards)
        judge = abstract_model(model_config(cfg.judge.model), mesh, cdt, cdt, "none", cfg.attention)
    total = cfg.steps * mode.updates_per_step(cfg)
    state = train_state(cfg, model, max(total, 1))
    res = residents(cfg, model, state, judge)
    base = res["initial_params"] + res["reference"] + res["judge"]
    programs, timings = [], {}

    def timed(name, fn):
        t0 = time.perf_counter()
        progress(f"compiling {name} for {topo.name} ...")
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        return out

    if "update" in only:
        programs += timed(
            "update",
            lambda: update_programs(
                cfg,
                model,
                state,
                max(total, 1),
                resident=base,
                logprob_resident=base + res["train_state"] - res["params"],
            ),
        )
    rollout = judge_rollout = None
    if mode.samples and "rollout" in only:
        g, s = cfg.grpo, cfg.sampling
        params = cast(state.params, cdt)
        live = base + res["train_state"] - (0 if res["rollout_copy"] else res["params"])
        progs, rollout = timed(
            "rollout",
            lambda: rollout_programs(
                "rollout",
                model,
                params,
                cdt,
                requests=g.prompts_per_step * g.group_size,
                n=g.group_size,
                max_slots=s.max_slots,
                prompt_len=cfg.data.max_prompt_tokens,
                max_new=s.max_new_tokens,
                budget=s.max_think_tokens is not None,
                resident=live,
            ),
        )
        programs += progs
    if judge is not None and "judge" in only:
        s, j = cfg.sampling, cfg.judge
        prompt = j.max_prompt_tokens or cfg.data.max_prompt_tokens + 2 * s.max_new_tokens + 256
        live = res["initial_params"] + res["reference"] + res["train_state"] + res["rollout_copy"]
        progs, judge_rollout = timed(
            "judge",
            lambda: rollout_programs(
                "judge",
                judge,
                judge.state,
                cdt,
                requests=judge_requests(cfg),
                n=j.votes,
                max_slots=j.sampling.max_slots,
                prompt_len=prompt,
                max_new=j.sampling.max_new_tokens,
                budget=j.sampling.max_think_tokens is not None,
                resident=live,
                role="judge",
            ),
        )
        programs += progs
    return report(
        cfg,
        topo,
        mcfg,
        model,
        programs,
        res,
        rollout,
        judge_rollout,
        timings,
        judge_cfg=judge.config if judge is not None else None,
        only=only,
    )


def report(cfg, topo, mcfg, model, programs, res, rollout, judge_rollout, timings, judge_cfg=None, only=PARTS) -> dict:
    applies = {"update"} | ({"rollout"} if mode_of(cfg).samples else set()) | ({"judge"} if judge_cfg else set())
    partial = bool(applies - set(only))
    chip = topo.chip
    hbm = chip.hbm_gib * GIB
    rows = []
    size = lambda dt: jnp.dtype(dt).itemsize
    for p in programs:
        mc, ro = (judge_cfg, judge_rollout) if p.role == "judge" else (mcfg, rollout)
        pdt = cfg.compute_dtype if p.role == "judge" else cfg.dtype
        flops, nbytes = roofline.program_cost(
            p.name,
            mc,
            p.shapes,
            remat=cfg.remat,
            attention=form_name(model.module.attention_impl),
            param_bytes=mc.num_params * size(pdt),
            compute_bytes=mc.num_params * size(cfg.compute_dtype),
            state_bytes=res["train_state"],
            kv_bytes=(ro or {}).get("kv_cache_bytes", 0),
            chips=topo.chips,
        )
        tc, tm = flops / chip.bf16_flops, nbytes / chip.hbm_bytes_per_s
        t = max(tc, tm)
        rows.append(
            dict(
                program=p.name,
                calls_per_step=p.calls,
                argument_bytes=p.argument,
                output_bytes=p.output,
                alias_bytes=p.alias,
                temp_bytes=p.temp,
                host_temp_bytes=p.host,
                # out and back once per micro-batch: the host link this takes to stay under the roofline time
                host_bytes_per_s=2 * p.host * p.shapes.get("micro_batches", 1) / t if t else 0.0,
                code_bytes=p.code,
                resident_bytes=p.resident,
                peak_bytes=p.peak,
                xla_flops=p.flops,
                xla_bytes_accessed=p.bytes_accessed,
                flops=flops,
                bytes=nbytes,
                seconds_per_call=t,
                seconds_per_step=t * p.calls,
                bound="compute" if tc >= tm else "memory",
                note=p.note,
                refused=p.note.startswith("REFUSED"),
            )
        )
    peak = max(r["peak_bytes"] for r in rows)
    worst = max(rows, key=lambda r: r["peak_bytes"])["program"]
    nrows, t = train_shapes(cfg, model)
    update = next((r for r in rows if r["program"].endswith("update")), {"seconds_per_call": 0.0})
    n_params = mcfg.num_params
    model_flops = 6 * n_params * nrows * t  # the update's useful work (whole batch, all chips)
    step_s = sum(r["seconds_per_step"] for r in rows)
    # a partial plan (--only) compiled some programs: whether they fit is known, whether the recipe fits is not
    programs_fit = peak <= hbm and not any(r["refused"] for r in rows)
    return dict(
        topology=topo.name,
        libtpu_topology=topo.libtpu_name,
        chip=chip.name,
        chips=topo.chips,
        chip_peaks=dict(
            bf16_flops=chip.bf16_flops, hbm_bytes_per_s=chip.hbm_bytes_per_s, hbm_gib=chip.hbm_gib, source=chip.source
        ),
        recipe=dict(
            model=cfg.model,
            mode=cfg.mode,
            mesh=dict(model.mesh.shape),
            dtype=cfg.dtype,
            compute_dtype=cfg.compute_dtype,
            remat=cfg.remat,
            # the forms these programs were compiled with ("auto" resolved; sequence_parallel's residual split)
            attention=form_name(model.module.attention_impl),
            residual=None if model.module.residual is None else cfg.sharding_rules.act_sequence,
            params=n_params,
            judge=cfg.judge.model if judge_cfg else "",
            judge_params=judge_cfg.num_params if judge_cfg else 0,
        ),
        update_batch=dict(kind=mode_of(cfg).name, rows=nrows, row_tokens=t, tokens=nrows * t),
        residents=res,
        rollout=rollout,
        judge_rollout=judge_rollout,
        programs=rows,
        peak_bytes=peak,
        peak_program=worst,
        hbm_bytes=hbm,
        programs_fit=programs_fit,
        fits=None if partial else programs_fit,
        parts=sorted(applies & set(only), key=PARTS.index),
        partial=partial,
        margin_gib=(hbm - peak) / GIB,
        update_seconds=update["seconds_per_call"],
        update_mfu=model_flops / (topo.chips * chip.bf16_flops * update["seconds_per_call"])
        if update["seconds_per_call"]
        else 0.0,
        step_seconds=step_s,
        compile_seconds=timings,
        notes=[
            "xla_flops / xla_bytes_accessed: cost_analysis() per chip per call, which counts each loop body "
            "(layer scan, micro-batch scan, decode loop) once; flops / bytes: closed form (plan.roofline), "
            "used for the times",
            "decode and prefill are planned at the worst case: every slot full, every row to its limit",
        ],
    )


def fits_line(p: dict) -> str:
    gib = p["peak_bytes"] / GIB
    verdict = (
        f"fits: {gib:.1f} of {p['chip_peaks']['hbm_gib']:.0f} GiB per chip ({p['margin_gib']:.1f} GiB to spare)"
        if p["fits"]
        else f"does not fit by {-p['margin_gib']:.1f} GiB: {gib:.1f} GiB per chip, "
        f"{p['chip_peaks']['hbm_gib']:.0f} GiB of HBM"
    )
    refused = [r for r in p["programs"] if r["refused"]]
    if refused and p["margin_gib"] >= 0:
        # TPU compiles also run out of a fusion's scoped on-chip VMEM, which no HBM margin helps
        where = "on-chip VMEM" if any("vmem" in r["note"].lower() for r in refused) else "HBM"
        verdict = f"does not fit: the compiler refused {', '.join(r['program'] for r in refused)} (out of {where})"
    part = f" (partial plan: {', '.join(p['parts'])} only)" if p["partial"] else ""
    if part and p["programs_fit"]:
        verdict = f"these programs fit: {gib:.1f} of {p['chip_peaks']['hbm_gib']:.0f} GiB per chip"
    return f"{p['topology']} ({p['chips']} x {p['chip']}): {verdict}; peak in {p['peak_program']}{part}"
