"""The wire format of `rrm-jax serve`: request bodies (pydantic, so a bad field is named), OpenAI-style errors, and
the pieces of OpenAI's answers (usage, logprobs, finish reasons, streamed text deltas).

A bad field answers 400 ``{"error": {"message", "type", "param"}}`` as OpenAI and vLLM do, not FastAPI's 422.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


# ------------------------------------------------------------------------------------------ request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (user, stream_options, ...)


class SamplingBody(_Body):
    model: str | None = None
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, lt=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**31)
    stream: bool = False
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens


class CompletionBody(SamplingBody):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None


class ChatBody(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: dict[str, Any] | None = None


class JudgeBody(_Body):
    query: str
    response_a: str
    response_b: str
    votes: int = Field(1, ge=1, le=64)
    max_think_tokens: int | None = Field(None, ge=0)
    direct: bool = False
    swap: Literal["random", "none", "both"] = "random"
    seed: int = Field(0, ge=0)


class RankBody(_Body):
    query: str
    candidates: list[str] = Field(min_length=2)
    strategy: Literal["knockout", "elo"] = "knockout"
    votes: int = Field(1, ge=1, le=64)
    seed: int = Field(0, ge=0)


class Group(_Body):
    query: str
    responses: list[str] = Field(min_length=1)
    reference: str | None = None


class RewardsBody(_Body):
    groups: list[Group] = Field(min_length=1)
    reward: Literal["judge_elo", "judge_knockout", "judge_reference"] = "judge_knockout"
    votes: int = Field(1, ge=1, le=64)
    seed: int = Field(0, ge=0)
    step: int = Field(0, ge=0)  # a training step: seeds its tournaments as rrm-jax's trainer does


class OpenRLHFBody(_Body):
    query: list[str] = Field(min_length=1)  # prompt + response, as OpenRLHF sends them
    prompts: list[str] | None = None
    labels: list[str | None] | None = None


# ------------------------------------------------------------------------------------------ errors
class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = {400: "invalid_request_error", 401: "authentication_error", 413: "invalid_request_error"}.get(
        status, "server_error" if status >= 500 else "rate_limit_error" if status == 429 else "invalid_request_error"
    )
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def cut_at_stop(text: str, stops) -> tuple[str, bool]:
    """The text before the first stop string (OpenAI leaves the stop string out) and whether one was found."""
    at = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


def finish_reason(c) -> str:
    return "stop" if c.finish_reason == "stop" else "length"


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class TextStream:
    """Text deltas of one streamed sample: held back while the tail may be a partial stop string or UTF-8 char."""

    def __init__(self, tok, stops, stop_ids):
        self.tok, self.stops, self.stop_ids, self.ids, self.sent = tok, stops, stop_ids, [], 0
        self.hold = max((len(s) for s in stops), default=1) - 1

    def add(self, ids) -> str:
        self.ids += [t for t in ids if t not in self.stop_ids]
        text, hit = cut_at_stop(self.tok.decode(self.ids, skip_special_tokens=False), self.stops)
        end = len(text) if hit else max(self.sent, len(text) - self.hold)
        if not hit and text.endswith("\ufffd"):
            end = min(end, len(text) - 1)
        return self._take(text, end)

    def final(self, text: str) -> str:
        return self._take(text, len(text))

    def _take(self, text: str, end: int) -> str:
        out = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out


def message_text(content, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages.{i}.content: only text parts are supported", f"messages.{i}.content")
        parts.append(part["text"])
    return "".join(parts)


def chat_logprobs(tok, c) -> list[dict]:
    out = []
    for t, lp in zip(c.token_ids, c.logprobs):
        s = tok.decode([t], skip_special_tokens=False)
        out.append({"token": s, "logprob": float(lp), "bytes": list(s.encode()), "top_logprobs": []})
    return out


def completion_logprobs(tok, c) -> dict:
    tokens = [tok.decode([t], skip_special_tokens=False) for t in c.token_ids]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens])[:-1]]).astype(int).tolist() if tokens else []
    return {
        "tokens": tokens,
        "token_logprobs": [float(x) for x in c.logprobs],
        "top_logprobs": None,
        "text_offset": offsets,
    }
