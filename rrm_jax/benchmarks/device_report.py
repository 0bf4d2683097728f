"""`rrm-jax bench device`'s report: the compile-time summary and the one line per section it prints after the JSON
(:mod:`rrm_jax.benchmarks.device` writes both)."""

from __future__ import annotations


def compile_summary(res: dict) -> dict:
    att, tr, dec = (res.get(k) or {} for k in ("attention", "train", "decode"))
    return dict(
        forward_s=(att.get("xla") or {}).get("compile_s"),
        forward_shape=[att.get("batch"), att.get("seq")],
        generate_s={
            f"{form} B={b}": r.get("compile_s")
            for form, rows in (dec.get("forms") or {}).items()
            for b, r in rows.items()
        },
        train_step_s={form: r.get("compile_s") for form, r in (tr.get("forms") or {}).items()},
    )


def report_lines(res: dict) -> list[str]:
    lines = []

    def line(name, fn):
        sec = res.get(name) or {}
        try:
            text = "not run" if not sec else sec["error"] if "error" in sec else sec.get("skipped") or fn(sec)
        except Exception as e:  # a partial section still gets a line
            text = f"(incomplete: {type(e).__name__}: {e})"
        lines.append(f"{name:<9}: {text}")

    cmp = lambda c: f"rel {c['rel_err']:.1e} max|d| {c['max_abs_diff']:.2e} argmax {c['argmax_agree']:.1%}"
    line(
        "device",
        lambda s: (
            f"{s['platform']} {s['device_kind']}, jax {s['jax']} / jaxlib {s['jaxlib']}, {s['device_count']} device(s)"
        ),
    )
    line(
        "parity",
        lambda s: (
            f"vs cpu fp32 ({s['layers']} layers): bf16 {cmp(s['bf16'])} | fp32 {cmp(s['fp32'])} | "
            f"fp32-highest {cmp(s['fp32_highest'])}"
        ),
    )

    def att(s):
        if s.get("fused_cudnn") == "not applicable":
            return f"fused cuDNN attention not applicable ({s['reason']})"
        parts = []
        for impl in ("cudnn", "auto"):
            r = s.get(impl, {})
            extra = f", vs xla {cmp(r['vs_xla'])}" if "vs_xla" in r else f" ({r['error'][:80]})" if "error" in r else ""
            parts.append(f"{impl}: fused {r.get('fused_cudnn')}{extra}")
        p = s.get("prefill") or {}
        if "rows_same" in p:
            parts.append(
                f"prefill cudnn vs xla: rows same {p['rows_same']:.0%}, first log-prob "
                f"max|d| {p['first_logprob_max_abs_diff']:.2e}"
            )
        elif "error" in p:
            parts.append(f"prefill: {p['error'][:80]}")
        return f"auto is {s['auto_is']} | " + " | ".join(parts)

    line("attention", att)

    def train(s):
        rows = []
        for form, r in s["forms"].items():
            if "mfu" in r:
                rows.append(
                    f"{form} ({r['form']}) {1e3 * r['step_s']:.1f} ms/step {r['tokens_per_s']:.0f} tok/s MFU {r['mfu']:.1%}"
                )
            else:
                rows.append(f"{form}: {str(r.get('skipped') or next(iter(r.values()), ''))[:80]}")
        peak = s["matmul_peak_flops_per_s"] / 1e12
        return f"{s['batch']}x{s['seq']}, of a measured {peak:.2f} TFLOP/s bf16 matmul | " + " | ".join(rows)

    line("train", train)

    def dec(s):
        rows = [
            f"{form} B={b} "
            + (
                f"{r['ms_per_step']:.2f} ms/step {r['tokens_per_s']:.0f} tok/s "
                f"{r['fraction_of_bandwidth_bound']:.0%} of bound"
                if "ms_per_step" in r
                else str(r.get("error") or r.get("skipped"))[:60]
            )
            for form, rs in s["forms"].items()
            for b, r in rs.items()
        ]
        return f"bw {s['read_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, default {s['default_form']} | " + " | ".join(rows)

    line("decode", dec)

    def judge(s):
        text = f"{s['rows']} prompts of {s['prompt_tokens'][0]}-{s['prompt_tokens'][1]} tokens, {s['new_tokens']} new: "
        text += f"rrm-jax {s['rrm_jax_s']:.2f} s"
        if "speedup" in s:
            text += f" vs transformers {s['transformers_s']:.2f} s = {s['speedup']:.2f}x"
            text += f"; greedy rows identical {s['greedy_rows_identical']:.0%}"
        else:
            text += f"; transformers {s['transformers']}"
        return f"{text} ({s['prompts'][:40]})"

    line("judge", judge)
    line(
        "remat",
        lambda s: (
            f"{s['batch']}x{s['seq']} {s['attention']} | "
            + " | ".join(
                f"{k} {1e3 * r['step_s']:.1f} ms/step" if "step_s" in r else f"{k}: {r.get('error', '')[:60]}"
                for k, r in s["runs"].items()
            )
        ),
    )
    line(
        "serve",
        lambda s: (
            f"offline {s['offline_req_s']:.2f} req/s | "
            + " | ".join(
                f"{r['clients']} clients {r['req_s']:.2f} req/s {r['completion_tok_s']:.0f} tok/s p99 {r['p99_s']:.1f} s"
                for r in s["rows"]
            )
        ),
    )
    sec = lambda v: "-" if v is None else f"{v:.1f} s"
    line(
        "compile",
        lambda s: (
            f"forward {sec(s['forward_s'])}, train step "
            + ", ".join(f"{f} {sec(v)}" for f, v in s["train_step_s"].items())
            + ", generate "
            + ", ".join(f"{b} {sec(v)}" for b, v in s["generate_s"].items())
        ),
    )
    return lines
