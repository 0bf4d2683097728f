"""The HTTP face of one engine: OpenAI-compatible completions, the RRM endpoints and OpenRLHF's reward shape.

``create_app(service)`` builds the FastAPI app; every endpoint feeds the same :class:`EngineWorker`, so
concurrent requests share its batches. Errors answer as OpenAI does: ``{"error": {"message", "type", "param"}}``
with 400 for a bad field (not FastAPI's 422), 401 for a wrong key, 413 for a body over the cap, 429 with
``Retry-After`` when the queue is full.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse

from rrm_jax.judge.judge import DirectJudge, Judge
from rrm_jax.sampler.config import SamplingConfig
from rrm_jax.sampler.inputs import stop_ids
from rrm_jax.serve.gate import Gate
from rrm_jax.serve.protocol import (
    ApiError,
    ChatBody,
    CompletionBody,
    JudgeBody,
    OpenRLHFBody,
    RankBody,
    RewardsBody,
    SamplingBody,
    TextStream,
    chat_logprobs,
    completion_logprobs,
    cut_at_stop,
    error_response,
    finish_reason,
    message_text,
    usage_of,
)
from rrm_jax.serve.worker import LATENCY_BUCKETS, EngineWorker, Job
from rrm_jax.training.rl.judge_rewards import JudgeReward


# ------------------------------------------------------------------------------------------ the service
@dataclasses.dataclass
class ServeOptions:
    name: str = "rrm-jax"  # the model id /v1/models lists
    api_key: str = ""
    max_queue: int = 64  # HTTP requests waiting beyond the engine's slots before 429
    max_body_bytes: int = 4 << 20
    reward: str = "judge_knockout"  # /get_reward's tournament when a request carries no labels
    judge_sampling: SamplingConfig | None = None
    prompt: str = "rrm-v1"
    max_prompt_tokens: int | None = None


class Service:
    """The model, its engine worker and the judges built over it (one per kind: thinking, budgeted, direct)."""

    def __init__(self, model, worker: EngineWorker, opts: ServeOptions):
        self.model, self.worker, self.opts = model, worker, opts
        self.engine_config = worker.engine.config
        self._judges: dict[tuple, Judge] = {}

    @property
    def capacity(self) -> int:
        return self.worker.engine.plan.shape.slots + self.opts.max_queue

    def judge(self, max_think_tokens: int | None = None, direct: bool = False) -> Judge:
        key = (max_think_tokens, direct)
        if key not in self._judges:
            base = self.opts.judge_sampling or self.engine_config
            sampling = dataclasses.replace(base, max_think_tokens=max_think_tokens)
            cls = DirectJudge if direct or max_think_tokens == 0 else Judge
            self._judges[key] = cls(
                self.model,
                prompt=self.opts.prompt,
                sampling=sampling,
                max_prompt_tokens=self.opts.max_prompt_tokens,
                generate=self.worker.generate,
            )
        return self._judges[key]

    def sampling(self, body: SamplingBody, max_tokens: int | None, default_max: int, prompt_len: int) -> SamplingConfig:
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if any(not s for s in stop):
            raise ApiError(400, "stop: empty stop string", "stop")
        ctx = self.model.config.max_position_embeddings
        limit = min(self.worker.engine.plan.max_new, ctx - prompt_len)
        n_new = max_tokens if max_tokens is not None else min(default_max, limit)
        if n_new > limit:
            raise ApiError(
                400,
                f"max_tokens={n_new}: with a prompt of {prompt_len} tokens this server allows at most {limit} new "
                f"tokens (context {ctx})",
                "max_tokens",
            )
        return dataclasses.replace(
            self.engine_config,
            n=body.n,
            temperature=body.temperature,
            top_p=body.top_p,
            min_p=body.min_p,
            max_new_tokens=n_new,
            stop_strings=stop,
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
            max_think_tokens=None,
            add_eos_stop=not body.ignore_eos,
        )


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="rrm-jax", docs_url=None, redoc_url=None)
    tok = service.model.tokenizer
    opts = service.opts

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        field = ".".join(loc) or None
        msg = first.get("msg", "invalid")
        if first.get("type") == "json_invalid" or not loc:  # not JSON, or JSON that is not an object
            return error_response(400, f"the body is not valid JSON for this endpoint (a JSON object): {msg}")
        return error_response(400, f"{field or 'body'}: {msg}", field)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    app.add_middleware(Gate, service=service)

    # -- plain endpoints --------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        card = {"id": opts.name, "object": "model", "created": int(service.worker.counters.started)}
        card |= {"owned_by": "rrm-jax", "max_model_len": service.model.config.max_position_embeddings}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics():
        c, eng = service.worker.counters, service.worker.engine
        up = max(time.time() - c.started, 1e-9)
        lines = [
            "# TYPE rrm_queue_depth gauge",
            f"rrm_queue_depth {len(eng.queue)}",
            "# TYPE rrm_slots_busy gauge",
            f"rrm_slots_busy {eng.slots_busy}",
            "# TYPE rrm_slots gauge",
            f"rrm_slots {eng.plan.shape.slots}",
            "# TYPE rrm_requests_waiting gauge",
            f"rrm_requests_waiting {service.worker.waiting}",
            "# TYPE rrm_requests_total counter",
            f"rrm_requests_total {c.requests}",
            "# TYPE rrm_request_errors_total counter",
            f"rrm_request_errors_total {c.errors}",
            "# TYPE rrm_prompt_tokens_total counter",
            f"rrm_prompt_tokens_total {c.prompt_tokens}",
            "# TYPE rrm_generation_tokens_total counter",
            f"rrm_generation_tokens_total {c.completion_tokens}",
            "# TYPE rrm_generation_tokens_per_second gauge",
            f"rrm_generation_tokens_per_second {c.completion_tokens / up:.6g}",
            "# TYPE rrm_request_latency_seconds histogram",
        ]
        acc = 0
        for b, n in zip((*LATENCY_BUCKETS, "+Inf"), c.latency_counts):
            acc += n
            lines.append(f'rrm_request_latency_seconds_bucket{{le="{b}"}} {acc}')
        lines += [f"rrm_request_latency_seconds_sum {c.latency_sum:.6g}", f"rrm_request_latency_seconds_count {acc}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    # -- generation -------------------------------------------------------------------------------------
    async def run_jobs(request: Request, prompts, config: SamplingConfig, on_tokens=None):
        """Submit every prompt, wait for all (cancelled when the client goes away) -> requests."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in prompts]

        def done(fut):
            return lambda req, err: loop.call_soon_threadsafe(_settle, fut, req, err)

        jobs = []
        for i, (p, f) in enumerate(zip(prompts, futures)):  # prompt i keyed as generate keys a list's i-th
            tokens = None if on_tokens is None else (lambda req, q, ids, i=i: on_tokens(i, q, ids))
            jobs.append(service.worker.submit(Job(p, config, i, done(f), on_tokens=tokens)))
        try:
            while not all(f.done() for f in futures):
                await asyncio.wait(futures, timeout=0.25)
                if await request.is_disconnected():
                    raise asyncio.CancelledError
        except BaseException:
            for j in jobs:
                service.worker.cancel(j)
            raise
        out = []
        for f in futures:
            req, err = f.result()
            if err is not None:
                raise ApiError(400, str(err), "prompt")
            out.append(req)
        return out

    def check_prompt(ids, field: str):
        limit = service.worker.engine.plan.max_prompt
        if len(ids) > limit:
            raise ApiError(400, f"{field}: {len(ids)} prompt tokens; this server takes at most {limit}", field)
        if not ids:
            raise ApiError(400, f"{field}: the prompt is empty", field)

    def encode(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        p = body.prompt
        if isinstance(p, str):
            prompts = [p]
        elif p and all(isinstance(x, int) for x in p):  # one prompt as token ids
            prompts = [list(p)]
        else:
            prompts = list(p)
        if not prompts:
            raise ApiError(400, "prompt: empty", "prompt")
        ids = [p if isinstance(p, list) else encode(p) for p in prompts]
        for x in ids:
            check_prompt(x, "prompt")
        config = service.sampling(body, body.max_tokens, 16, max(len(x) for x in ids))
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": opts.name}
        if body.stream:
            return _sse(stream_choices(request, ids, config, head, chat=False))
        reqs = await run_jobs(request, ids, config)
        choices = []
        for i, r in enumerate(reqs):
            for c in r.completions:
                text, hit = cut_at_stop(c.text, config.stop_strings)
                choice = {"index": i * config.n + c.sample_index, "text": (prompts[i] if body.echo else "") + text}
                choice["finish_reason"] = "stop" if hit else finish_reason(c)
                choice["logprobs"] = completion_logprobs(tok, c) if body.logprobs is not None else None
                choices.append(choice)
        usage = usage_of(sum(len(x) for x in ids), sum(c.num_tokens for r in reqs for c in r.completions))
        return head | {"choices": choices, "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request):
        messages = [{"role": m.role, "content": message_text(m.content, i)} for i, m in enumerate(body.messages)]
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - a template that refuses these messages
            raise ApiError(400, f"messages: the chat template refused them: {e}", "messages") from e
        ids = encode(text)
        check_prompt(ids, "messages")
        config = service.sampling(body, body.max_completion_tokens or body.max_tokens, 1 << 30, len(ids))
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "chat.completion", "created": created, "model": opts.name}
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            chunk = head | {"object": "chat.completion.chunk"}
            return _sse(stream_choices(request, [ids], config, chunk, chat=True, usage=usage))
        (r,) = await run_jobs(request, [ids], config)
        choices = []
        for c in r.completions:
            content, hit = cut_at_stop(c.text, config.stop_strings)
            choice = {"index": c.sample_index, "message": {"role": "assistant", "content": content}}
            choice["finish_reason"] = "stop" if hit else finish_reason(c)
            choice["logprobs"] = {"content": chat_logprobs(tok, c)} if body.logprobs else None
            choices.append(choice)
        return head | {"choices": choices, "usage": usage_of(len(ids), sum(c.num_tokens for c in r.completions))}

    async def stream_choices(request, ids, config, head, *, chat: bool, usage: bool = False):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        ends = frozenset(stop_ids(service.model, config))
        streams = {(i, q): TextStream(tok, config.stop_strings, ends) for i in range(len(ids)) for q in range(config.n)}

        def on_tokens(i, q, new):
            loop.call_soon_threadsafe(events.put_nowait, (i, q, new))

        task = asyncio.ensure_future(run_jobs(request, ids, config, on_tokens))

        def piece(i, q, text=None, finish=None):
            index = i * config.n + q
            if chat:
                delta = {} if text is None else {"content": text}
                choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
            return head | {"choices": [choice]}

        try:
            if chat:
                for q in range(config.n):
                    yield piece(0, q) | {
                        "choices": [{"index": q, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                    }
            while not task.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                i, q, new = getter.result()
                text = streams[i, q].add(new)
                if text:
                    yield piece(i, q, text)
            reqs = task.result()
            for i, r in enumerate(reqs):
                for c in r.completions:
                    text, hit = cut_at_stop(c.text, config.stop_strings)
                    rest = streams[i, c.sample_index].final(text)
                    if rest:
                        yield piece(i, c.sample_index, rest)
                    yield piece(i, c.sample_index, None, "stop" if hit else finish_reason(c))
            if usage:
                n_out = sum(c.num_tokens for r in reqs for c in r.completions)
                yield head | {"choices": [], "usage": usage_of(sum(len(x) for x in ids), n_out)}
        finally:
            if not task.done():
                task.cancel()

    # -- RRM endpoints (sync: the judge blocks its threadpool thread while the engine batches everyone) -----
    def fail_400(e: Exception, field: str | None = None):
        raise ApiError(400, str(e), field) from e

    @app.post("/v1/judge")
    def judge(body: JudgeBody):
        try:
            j = service.judge(body.max_think_tokens, body.direct)
            v = j.compare(
                body.query, body.response_a, body.response_b, votes=body.votes, swap=body.swap, seed=body.seed
            )
        except ValueError as e:
            fail_400(e)
        return {
            "winner": v.winner,
            "votes_a": v.votes_a,
            "votes_b": v.votes_b,
            "invalid": v.invalid,
            "soft": v.soft,
            "reasoning": v.reasonings,
            "orders": v.orders,
            "tokens": v.tokens,
            "truncated": v.truncated,
        }

    @app.post("/v1/rank")
    def rank(body: RankBody):
        try:
            r = service.judge().rank(
                body.query, body.candidates, strategy=body.strategy, votes=body.votes, seed=body.seed
            )
        except ValueError as e:
            fail_400(e)
        return {
            "ranking": [int(i) for i in r.order],
            "best": int(r.best),
            "ratings": [float(x) for x in r.ratings],
            "comparisons": r.comparisons,
            "tokens": r.tokens,
            "strategy": r.strategy,
        }

    def rewards_of(groups: list[tuple[str, list[str], str | None]], kind: str, votes: int, seed: int, step: int = 0):
        return JudgeReward(service.judge(), kind, votes=votes, seed=seed).of_groups(groups, step)

    @app.post("/v1/rewards")
    def rewards(body: RewardsBody):
        if body.reward == "judge_reference":
            missing = [i for i, g in enumerate(body.groups) if not g.reference]
            if missing:
                raise ApiError(400, f"groups.{missing[0]}.reference: judge_reference needs one", "reference")
        groups = [(g.query, g.responses, g.reference) for g in body.groups]
        try:
            return {"rewards": rewards_of(groups, body.reward, body.votes, body.seed, body.step)}
        except ValueError as e:
            fail_400(e)

    @app.post("/get_reward")
    def get_reward(body: OpenRLHFBody):
        """OpenRLHF's remote reward model: ``query`` holds prompt + response, ``prompts`` the prompts; samples
        of one prompt are ranked against each other by the server's tournament, or each judged against its label
        (a reference answer) when labels are given."""
        n = len(body.query)
        prompts = body.prompts or [""] * n
        labels = body.labels or [None] * n
        if len(prompts) != n or len(labels) != n:
            field = "prompts" if len(prompts) != n else "labels"
            raise ApiError(400, f"{field}: {len(prompts if field == 'prompts' else labels)} entries for {n} queries")
        order: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            order.setdefault(p, []).append(i)
        use_labels = any(labels)
        groups, index = [], []
        for p, idx in order.items():
            responses = [body.query[i][len(p) :] if body.query[i].startswith(p) else body.query[i] for i in idx]
            if use_labels:  # each sample against its own label: one group per sample
                for i, r in zip(idx, responses):
                    groups.append((p, [r], labels[i] or ""))
                    index.append([i])
            else:
                groups.append((p, responses, None))
                index.append(idx)
        kind = "judge_reference" if use_labels else opts.reward
        try:
            scores = rewards_of(groups, kind, 1, 0)
        except ValueError as e:
            fail_400(e)
        flat = np.zeros(n, np.float64)
        for idx, s in zip(index, scores):
            flat[idx] = s
        return {"rewards": [float(x) for x in flat]}

    return app


def _sse(chunks) -> StreamingResponse:
    async def body():
        async for c in chunks:
            yield f"data: {json.dumps(c)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


def _settle(fut: asyncio.Future, req, err) -> None:
    if not fut.done():
        fut.set_result((req, err))


__all__ = ["ServeOptions", "Service", "create_app"]
