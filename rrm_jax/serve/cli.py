"""`rrm-jax serve`: load a judge, plan one engine for it and serve it over HTTP until SIGTERM/Ctrl-C.

Shutdown drains: uvicorn stops accepting, every accepted request finishes, then the engine thread ends and the
process exits 0.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from pathlib import Path

from rrm_jax.core.errors import ConfigError
from rrm_jax.evaluation.config import JudgeOptions, build_config, sampling_config, validate
from rrm_jax.sampler.config import SamplingConfig

DEMO_JUDGE = Path("runs/demo/judge")  # where `rrm-jax demo` leaves its trained judge


@dataclasses.dataclass(frozen=True)
class ServeConfig(JudgeOptions):
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""  # when set, every endpoint but /health needs "Authorization: Bearer KEY"
    # --max-slots (sampling.max_slots): the sequences decoding at once
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=8192, temperature=0.6, top_p=1.0, max_slots=8)
    max_queue: int = 64  # HTTP requests waiting beyond the slots before 429
    max_model_len: int = 0  # prompt + new tokens per sequence (0: the model's context, at most 8192)
    max_body_bytes: int = 4 << 20
    reward: str = "judge_knockout"  # /get_reward's tournament for samples without labels
    name: str = ""  # the model id /v1/models lists (default: the --model value)
    warmup: bool = True  # compile every program the engine may run before serving, so no request waits for one


def build_service(cfg: ServeConfig):
    """The model, its engine (planned for ``cfg``'s limits) in a worker thread, and the Service over them."""
    from rrm_jax.evaluation.cli import load_model
    from rrm_jax.judge.judge import verdict_digit_ids
    from rrm_jax.sampler.engine import Engine
    from rrm_jax.sampler.inputs import forced_ids, stop_ids, token_seq
    from rrm_jax.sampler.planner import plan
    from rrm_jax.serve.app import ServeOptions, Service
    from rrm_jax.serve.worker import EngineWorker

    model = load_model(cfg)
    tok, ctx = model.tokenizer, model.config.max_position_embeddings
    length = min(ctx, cfg.max_model_len or 8192)
    base = sampling_config(cfg, None)
    suffix = forced_ids(tok, base)
    think_end = token_seq(tok, base.think_end, "think_end", single_token=True)
    max_new = min(base.max_new_tokens, length - len(suffix) - 1)
    if max_new < 1:
        raise ConfigError(f"max_model_len={length} leaves no room to generate; raise --max-model-len")
    max_prompt = cfg.max_prompt_tokens or max(1, length - max_new - len(suffix))
    config = dataclasses.replace(
        base, max_new_tokens=max_new, probe_token_ids=tuple(verdict_digit_ids(tok)), stop_token_ids=()
    )
    shapes = plan(
        requests=base.max_slots,
        max_slots=base.max_slots,
        batch_multiple=model.batch_multiple(),
        prompt_len=max_prompt,
        max_new=max_new,
        suffix_len=len(suffix),
        think_end_len=len(think_end),
        n_stops=len(stop_ids(model, config)),
        n_probes=len(config.probe_token_ids),
        top_k=base.top_k,
    )
    engine = Engine(model, shapes, config)
    if cfg.warmup:
        from rrm_jax.core.progress import Progress

        with Progress("serve: compiling", len(engine.programs()) + 1, enabled=cfg.progress) as bar:
            engine.warmup(lambda done, total: bar.update(completed=done))
    worker = EngineWorker(engine)
    opts = ServeOptions(
        name=cfg.name or cfg.model,
        api_key=cfg.api_key,
        max_queue=cfg.max_queue,
        max_body_bytes=cfg.max_body_bytes,
        reward=cfg.reward,
        prompt=cfg.prompt,
        max_prompt_tokens=max_prompt,
    )
    return Service(model, worker, opts)


def _check(cfg: ServeConfig) -> ServeConfig:
    from rrm_jax.training.rl.judge_rewards import KINDS

    validate(cfg)
    if cfg.reward not in KINDS or cfg.reward == "judge_reference":
        raise ConfigError(f"--reward {cfg.reward}: one of judge_elo, judge_knockout")
    if not 0 <= cfg.port < 65536:
        raise ConfigError(f"--port {cfg.port}: not a port")
    for name in ("max_queue", "max_body_bytes", "max_model_len"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 0")
    if not cfg.model:
        if not (DEMO_JUDGE / "config.json").is_file():
            raise ConfigError(
                "--model is required (a checkpoint directory or hub id); without it rrm-jax serve serves the judge "
                f"of the last `rrm-jax demo` run, {DEMO_JUDGE}, and there is none here"
            )
        prompt = "demo" if cfg.prompt == JudgeOptions.prompt else cfg.prompt  # the demo judge's own prompt
        cfg = dataclasses.replace(cfg, model=str(DEMO_JUDGE), prompt=prompt, name=cfg.name or "rrm-jax-demo")
    return cfg


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str]) -> int:
    cfg = _check(build_config(ServeConfig, argv, "rrm-jax serve", "serve a judge over HTTP (OpenAI + RRM API)"))
    try:
        import uvicorn

        from rrm_jax.serve.app import create_app
    except ImportError as e:
        raise ConfigError(f"needs the [serve] extra: pip install 'rrm-jax[serve]' ({e.name} is missing)") from None
    if not _loopback(cfg.host) and not cfg.api_key:
        print(f"warning: serving on {cfg.host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    service = build_service(cfg)
    app = create_app(service)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # drain, then exit 0 (uvicorn would re-raise the signal afterwards)
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    server = Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False))
    shape = service.worker.engine.plan
    print(
        f"rrm-jax serve: {service.opts.name} at http://{cfg.host}:{cfg.port} ({shape.shape.slots} slots, prompts up "
        f"to {shape.max_prompt} tokens, up to {shape.max_new} new tokens)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run()
    finally:
        service.worker.stop()
    print("rrm-jax serve: stopped; every accepted request was answered", file=sys.stderr)
    return 0 if server.started else 1
