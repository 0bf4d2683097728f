"""The judge as a reward function for other RL stacks, in process or through `rrm-jax serve`.

TRL's ``GRPOTrainer(reward_funcs=[fn])`` and Tunix's GRPO learner (``reward_fns=[fn]``) both call
``fn(prompts, completions, **kwargs) -> list[float]``, one reward per completion, with each prompt's completions
laid out consecutively (TRL repeats a prompt ``num_generations`` times). :func:`reward_function` turns a judge into
such a function: the completions of one prompt form a group, ranked by a tournament (``judge_elo``: standardised
ratings; ``judge_knockout``: rounds survived) or each judged against a reference answer (``judge_reference``:
+1 / -1, the reference from the dataset column ``kwargs[reference_key]``). The rewards are the ones rrm-jax's own
trainer uses (:class:`rrm_jax.training.rl.judge_rewards.JudgeReward`, one function). Backed by a
:class:`~rrm_jax.judge.Judge` in this process, or by a server URL through :class:`JudgeClient`.

Conversational prompts (lists of ``{"role", "content"}``) are judged on their last user message; conversational
completions on their assistant text.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

KINDS = ("judge_elo", "judge_knockout", "judge_reference")


class JudgeClient:
    """A small client of `rrm-jax serve`'s RRM endpoints (standard library only)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # the server's one-line error, not urllib's
            try:
                msg = json.loads(e.read())["error"]["message"]
            except Exception:  # noqa: BLE001
                msg = str(e)
            raise RuntimeError(f"{self.url}{path}: {e.code} {msg}") from None

    def judge(self, query: str, response_a: str, response_b: str, **kw) -> dict:
        return self._post("/v1/judge", {"query": query, "response_a": response_a, "response_b": response_b, **kw})

    def rank(self, query: str, candidates: Sequence[str], **kw) -> dict:
        return self._post("/v1/rank", {"query": query, "candidates": list(candidates), **kw})

    def rewards(self, groups: Sequence[dict], reward: str = "judge_knockout", **kw) -> list[list[float]]:
        return self._post("/v1/rewards", {"groups": list(groups), "reward": reward, **kw})["rewards"]


def _text(x: Any, role: str) -> str:
    """A plain string, or the text of a conversation (the last message of ``role``)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        return str(x.get("content", ""))
    msgs = [m for m in x if isinstance(m, dict)]
    picked = [m for m in msgs if m.get("role") == role] or msgs
    return str(picked[-1].get("content", "")) if picked else ""


def groups_of(prompts: Sequence) -> list[list[int]]:
    """Indices of consecutive completions that share a prompt (TRL's layout)."""
    out: list[list[int]] = []
    last = object()
    for i, p in enumerate(prompts):
        key = json.dumps(p, sort_keys=True, default=str)
        if out and key == last:
            out[-1].append(i)
        else:
            out.append([i])
            last = key
    return out


def reward_function(
    judge,
    kind: str = "judge_knockout",
    *,
    votes: int = 1,
    seed: int = 0,
    reference_key: str = "reference",
    api_key: str | None = None,
) -> Callable[..., list[float]]:
    """``fn(prompts, completions, **kwargs) -> list[float]`` from a Judge, a server URL or a :class:`JudgeClient`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(judge, str):
        judge = JudgeClient(judge, api_key=api_key)
    calls = [0]  # each call seeds its tournaments anew, as each training step does

    def rewards(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        refs = kwargs.get(reference_key)
        if kind == "judge_reference" and refs is None:
            raise ValueError(f"judge_reference needs the dataset column {reference_key!r} (the reference answers)")
        members = groups_of(prompts)
        step = calls[0]
        calls[0] += 1
        groups = [
            (
                _text(prompts[idx[0]], "user"),
                [_text(completions[i], "assistant") for i in idx],
                str(refs[idx[0]]) if kind == "judge_reference" else None,
            )
            for idx in members
        ]
        if isinstance(judge, JudgeClient):
            wire = [
                {"query": q, "responses": r, **({"reference": ref} if ref is not None else {})} for q, r, ref in groups
            ]
            scores = judge.rewards(wire, kind, votes=votes, seed=seed, step=step)
        else:
            from rrm_jax.training.rl.judge_rewards import JudgeReward

            scores = JudgeReward(judge, kind, votes=votes, seed=seed).of_groups(groups, step)
        out = [0.0] * len(completions)
        for idx, s in zip(members, scores):
            for i, v in zip(idx, s):
                out[i] = float(v)
        return out

    rewards.__name__ = f"rrm_{kind}"  # TRL logs each reward function under its name
    return rewards


def verl_compute_score(data_source, solution_str, ground_truth, extra_info=None, *, url: str | None = None) -> float:
    """verl's custom reward function (``custom_reward_function.path=<this file> name=verl_compute_score``): the
    solution judged against the ground truth by `rrm-jax serve` at ``url`` (default ``$RRM_JAX_URL``, else
    http://127.0.0.1:8000, key ``$RRM_JAX_KEY``): +1 when the judge prefers the solution, -1 otherwise, as the
    judge_reference reward. The query shown to the judge is ``extra_info["question"]`` when the dataset keeps it."""
    import os

    del data_source
    client = JudgeClient(url or os.environ.get("RRM_JAX_URL", "http://127.0.0.1:8000"), os.environ.get("RRM_JAX_KEY"))
    info = extra_info if isinstance(extra_info, dict) else {}
    query = str(info.get("question") or info.get("prompt") or "")  # datasets that keep the task in extra_info
    (reward,) = client.rewards([{"query": query, "responses": [solution_str], "reference": str(ground_truth)}],
                               "judge_reference")  # fmt: skip
    return float(reward[0])
