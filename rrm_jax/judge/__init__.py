"""RRM judging: the prompt, verdict parsing, and the `Judge` (majority voting, soft scores, tournaments)."""

from rrm_jax.judge.parse import parse_verdict
from rrm_jax.judge.prompt import RRM_PROMPT_V1, JudgePrompt, get_prompt, make_render, register_prompt, render_prompt
from rrm_jax.judge.verdict import Verdict, majority

__all__ = [
    "Verdict",
    "majority",
    "parse_verdict",
    "JudgePrompt",
    "RRM_PROMPT_V1",
    "get_prompt",
    "make_render",
    "register_prompt",
    "render_prompt",
    "Judge",
    "DirectJudge",
    "DirectScore",
]


def __getattr__(name):
    # Lazy: `Judge` pulls in the sampler and JAX; parsing/verdicts/prompts stay importable without them.
    if name in ("Judge", "DirectJudge"):
        from rrm_jax.judge.judge import DirectJudge, Judge

        return Judge if name == "Judge" else DirectJudge
    if name == "DirectScore":
        from rrm_jax.judge.direct import DirectScore

        return DirectScore
    raise AttributeError(name)
