"""`rrm-jax bench serve`: `rrm-jax serve` against `transformers serve --continuous-batching`, side by side.

One random-weight checkpoint (a Qwen2.5-0.5B shape by default, the real R1-distill tokenizer) is written to a
temporary directory and served by each server in turn, alone on the machine. C closed-loop clients (each sends
its next request when the last is answered) replay the same RRM judge requests built from PandaLM pairs:
rrm-jax gets them at its judge endpoint (``POST /v1/judge``: think up to ``--think`` tokens, then the forced
verdict), transformers gets the same rendered prompt at ``POST /v1/completions`` with ``max_tokens`` = the
thinking budget plus the forced suffix, so both compute the same prompt and the same number of new tokens (the
table shows the counts each reported). Before the servers, rrm-jax's offline ``Judge.compare_many`` judges the
same requests as one call: the bar the server is held to at full concurrency.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from rrm_jax.benchmarks.judge_workload import DEFAULT_DATA, random_model

DEFAULT_TOKENIZER = DEFAULT_DATA.parents[2] / "tokenizers" / "deepseek-r1-distill-qwen"


@dataclasses.dataclass(frozen=True)
class Request:
    query: str
    a: str
    b: str
    prompt: str  # the judge's prompt text for (query, a, b) shown in this order
    prompt_tokens: int


@dataclasses.dataclass
class Level:
    """What C clients measured against one server."""

    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    prompt_tokens: int
    completion_tokens: int
    errors: int

    @property
    def req_s(self) -> float:
        return self.requests / self.seconds

    def row(self, name: str) -> dict:
        lat = np.asarray(self.latencies or [float("nan")])
        return {
            "server": name,
            "clients": self.clients,
            "requests": self.requests,
            "errors": self.errors,
            "req_s": self.req_s,
            "prompt_tok_s": self.prompt_tokens / self.seconds,
            "completion_tok_s": self.completion_tokens / self.seconds,
            "completion_tokens": self.completion_tokens,
            "p50_s": float(np.percentile(lat, 50)),
            "p99_s": float(np.percentile(lat, 99)),
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cmd: list[str], port: int, log: Path, timeout: float = 900):
    """Start a server, wait for its /health, yield its base URL, then SIGTERM it (and wait for it to exit)."""
    import httpx

    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited with {proc.returncode} before serving; its log:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{' '.join(cmd)} did not serve within {timeout:.0f} s; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def drive(send, requests: list[Request], clients: int) -> Level:
    """``clients`` threads, each sending the next of ``requests`` when its last is answered."""
    todo: queue.SimpleQueue[Request] = queue.SimpleQueue()
    for r in requests:
        todo.put(r)
    lat: list[float] = []
    done = {"completion": 0, "errors": 0}
    lock = threading.Lock()

    def client():
        while True:
            try:
                r = todo.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            try:
                n = send(r)
            except Exception as e:  # noqa: BLE001 - counted and shown; the run goes on
                with lock:
                    done["errors"] += 1
                print(f"[serve] request failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
                continue
            with lock:
                lat.append(time.perf_counter() - t0)
                done["completion"] += n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    ok = len(lat)
    prompt = sum(r.prompt_tokens for r in requests[:ok]) if ok == len(requests) else ok * _mean_prompt(requests)
    return Level(clients, ok, secs, lat, int(prompt), done["completion"], done["errors"])


def _mean_prompt(requests: list[Request]) -> float:
    return sum(r.prompt_tokens for r in requests) / len(requests)


def _check(resp) -> None:
    if resp.status_code != 200:
        raise RuntimeError(f"{resp.request.url.path}: {resp.status_code} {resp.text[:300]}")


def _sender(kind: str, url: str, model: str, think: int, new_tokens: int, timeout: float):
    import httpx

    client = httpx.Client(base_url=url, timeout=timeout, limits=httpx.Limits(max_connections=256))

    def rrm(r: Request) -> int:
        body = {"query": r.query, "response_a": r.a, "response_b": r.b, "max_think_tokens": think, "swap": "none"}
        resp = client.post("/v1/judge", json=body)
        _check(resp)
        return int(resp.json()["tokens"])

    def hf(r: Request) -> int:
        body = {"model": model, "prompt": r.prompt, "max_tokens": new_tokens, "temperature": 0.6}
        resp = client.post("/v1/completions", json=body)
        _check(resp)
        return int(resp.json()["usage"]["completion_tokens"])

    return {"rrm-jax": rrm, "transformers": hf}[kind]


def _table(rows: list[dict]) -> str:
    head = "| server | clients | requests | req/s | prompt tok/s | completion tok/s | p50 s | p99 s |"
    out = [head, "|" + "---|" * 8]
    for r in rows:
        err = f" ({r['errors']} failed)" if r["errors"] else ""
        out.append(
            f"| {r['server']} | {r['clients']} | {r['requests']}{err} | {r['req_s']:.3f} | {r['prompt_tok_s']:.0f} "
            f"| {r['completion_tok_s']:.1f} | {r['p50_s']:.1f} | {r['p99_s']:.1f} |"
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rrm-jax bench serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b", help="a preset shape; random weights")
    ap.add_argument("--layers", type=int, default=0, help="fewer layers than the preset (0: the preset's)")
    ap.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="PandaLM test set (JSON)")
    ap.add_argument("--clients", default="1,4,16,64", help="concurrency levels, comma-separated")
    ap.add_argument(
        "--requests",
        type=int,
        default=32,
        help="requests at most per level (each level sends 2 per client, 8 at least)",
    )
    ap.add_argument("--think", type=int, default=64, help="thinking budget per verdict (tokens)")
    ap.add_argument("--slots", type=int, default=16, help="rrm-jax serve --max-slots")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--peer", default="transformers", choices=("transformers", "none"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a request may take")
    ap.add_argument("--json", default="", help="also write the rows here")
    ap.add_argument(
        "--warmup",
        default="true",
        choices=("true", "false"),
        help="rrm-jax serve --warmup: compile every program first (false: each level is run once untimed instead)",
    )
    args = ap.parse_args(argv)
    levels = sorted({int(c) for c in args.clients.split(",")})
    per_level = {c: max(c, min(max(8, 2 * c), args.requests)) for c in levels}  # at least one per client

    import jax
    import jax.numpy as jnp

    import rrm_jax
    from rrm_jax.core.tokenizers import load_tokenizer
    from rrm_jax.data.records import read_pandalm
    from rrm_jax.judge.judge import Judge
    from rrm_jax.judge.prompt import RRM_PROMPT_V1, render_prompt
    from rrm_jax.sampler import SamplingConfig
    from rrm_jax.sampler.inputs import forced_ids

    if not Path(args.tokenizer).is_dir():
        raise SystemExit(f"--tokenizer {args.tokenizer} does not exist (the R1-distill tokenizer lives in ../shared)")
    if not Path(args.data).is_file():
        raise SystemExit(f"--data {args.data} does not exist (the PandaLM test set lives in ../shared/data/pandalm)")
    tok = load_tokenizer(Path(args.tokenizer))
    recs = read_pandalm(Path(args.data)).records
    most = max(per_level.values())
    pool = []
    for rec in (recs[i % len(recs)] for i in range(most)):
        text = render_prompt(tok, RRM_PROMPT_V1, rec.query, rec.response_a, rec.response_b)
        n = len(tok.encode(text, add_special_tokens=False))
        pool.append(Request(rec.query, rec.response_a, rec.response_b, text, n))
    base = SamplingConfig()
    suffix = len(forced_ids(tok, base))
    # a verdict whose thinking runs to the budget: the budget, then the forced suffix, whose last token's
    # distribution gives the verdict (a judge's token limit is its thinking budget, the suffix comes on top)
    new_tokens = args.think + suffix
    longest = max(r.prompt_tokens for r in pool)
    context = longest + new_tokens + 1

    model = random_model(args.model, tok, args.layers, getattr(jnp, args.dtype))
    cfg = model.config
    lens = [r.prompt_tokens for r in pool]
    print(
        f"[serve] {args.model} L={cfg.num_layers} D={cfg.hidden_size} {args.dtype}, random weights, on "
        f"{jax.devices()[0].device_kind} ({os.cpu_count()} CPUs); RRM judge requests from PandaLM pairs, prompts "
        f"{min(lens)}-{max(lens)} tokens, thinking budget {args.think} + forced verdict {suffix} = {new_tokens} new "
        f"tokens each, temperature 0.6; {args.slots} rrm-jax slots; clients {levels}",
        flush=True,
    )
    rows: list[dict] = []

    # ---- offline: the same requests as one compare_many call (warm first, so compiles are not counted)
    judge = Judge(
        model,
        sampling=dataclasses.replace(
            base, max_new_tokens=args.think, max_think_tokens=args.think, max_slots=args.slots, temperature=0.6
        ),
    )
    n_all = per_level[max(levels)]
    batch = [(r.query, r.a, r.b) for r in pool[:n_all]]
    judge.compare_many(batch[: args.slots], swap="none")
    t0 = time.perf_counter()
    verdicts = judge.compare_many(batch, swap="none")
    offline_s = time.perf_counter() - t0
    offline_tokens = sum(v.tokens for v in verdicts)
    offline = n_all / offline_s
    print(
        f"[serve] offline Judge.compare_many of {n_all} requests: {offline_s:.1f} s = {offline:.3f} req/s, "
        f"{offline_tokens / offline_s:.1f} completion tok/s",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "judge"
        rrm_jax.save_hf(model, ckpt)
        del model, judge
        flags = f"--dtype {args.dtype} --port {{port}}"
        servers = {
            "rrm-jax": [sys.executable, "-m", "rrm_jax.cli", "serve", "--model", str(ckpt)]
            + f"{flags} --max-slots {args.slots} --max-new-tokens {args.think} --max-model-len {context} "
            f"--max-queue {max(256, most)} --warmup {args.warmup}".split(),
            "transformers": ["transformers", "serve", str(ckpt)]
            + f"{flags} --continuous-batching --device cpu --host 127.0.0.1".split(),
        }
        names = ["rrm-jax"] + (["transformers"] if args.peer == "transformers" else [])
        for name in names:
            port = _free_port()
            with running([a.format(port=port) for a in servers[name]], port, Path(tmp) / f"{name}.log") as url:
                send = _sender(name, url, str(ckpt), args.think, new_tokens, args.timeout)
                warm = drive(send, pool[: args.slots], min(args.slots, max(levels)))  # compiles / first batches
                if args.warmup == "false" and name == "rrm-jax":  # compiled on demand: each level's shapes once
                    for c in levels:
                        drive(send, pool[: per_level[c]], c)
                if warm.errors:
                    raise SystemExit(f"[serve] {name} failed its warm-up; see {Path(tmp) / f'{name}.log'}")
                for c in levels:
                    level = drive(send, pool[: per_level[c]], c)
                    rows.append(level.row(name))
                    r = rows[-1]
                    print(
                        f"[serve] {name} {c} clients: {r['requests']} requests in {level.seconds:.1f} s = "
                        f"{r['req_s']:.3f} req/s, {r['completion_tok_s']:.1f} completion tok/s, p50 {r['p50_s']:.1f} "
                        f"s, p99 {r['p99_s']:.1f} s" + (f", {r['errors']} failed" if r["errors"] else ""),
                        flush=True,
                    )

    print(_table(rows))
    ours = {r["clients"]: r for r in rows if r["server"] == "rrm-jax"}
    theirs = {r["clients"]: r for r in rows if r["server"] == "transformers"}
    if 16 in ours and 16 in theirs:
        a, b = ours[16], theirs[16]
        print(
            f"[serve] 16 clients: rrm-jax {a['req_s'] / b['req_s']:.2f}x transformers serve's req/s [target >= 3x], "
            f"p99 {a['p99_s']:.1f} s vs {b['p99_s']:.1f} s [target: no worse]"
        )
    top = ours[max(levels)]
    if top["requests"] == n_all:
        print(
            f"[serve] rrm-jax serve at {max(levels)} clients: {top['req_s']:.3f} req/s = {top['req_s'] / offline:.0%} "
            f"of offline compare_many on the same {n_all} requests [target >= 90%]"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"offline_req_s": offline, "rows": rows}, indent=1))
    return 0
