"""Test doubles shared by the test modules: tokenizers, a scripted sampler, a model stand-in, a completion.

* :class:`ChatCharTokenizer`: character level with a chat template, for rendering and parsing judge prompts
  (test_judge).
* :class:`SamplerCharTokenizer`: character level with no chat template, that decodes any id a random
  512-token model emits, for the real sampler's text, stop-string and thinking-budget paths (test_sampler).
* :class:`FakeGenerate` / :class:`FakeModel`: a scripted ``generate`` and the model a `Judge` is built on.
* :class:`FakeCompletion`: the fields of a sampler ``Completion`` that a rollout reads (test_rl).

The two tokenizers differ on purpose: their ids are what the tests' expected values were computed with.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from rrm_jax.sampler import Completion, SamplingConfig

SPECIALS = ["<think>", "</think>", "<eos>"]
SUFFIX = SamplingConfig().forced_suffix


class ChatCharTokenizer:
    """Character-level tokenizer with a chat template and <think>/</think> as single tokens: the specials are
    ids 1-3, a character is 16 + its code point."""

    chat_template = "char"
    eos_token_id = 3

    def encode(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            for k, s in enumerate(SPECIALS):
                if text.startswith(s, i):
                    ids.append(1 + k)
                    i += len(s)
                    break
            else:
                ids.append(16 + ord(text[i]))
                i += 1
        return ids

    def decode(self, ids, skip_special_tokens=False):
        return "".join(SPECIALS[t - 1] if t < 16 else chr(t - 16) for t in ids)

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"


class SamplerCharTokenizer:
    """A minimal HF-tokenizer stand-in (the sampler uses encode/decode/convert_tokens_to_ids/eos): a character
    is its code point mod 256, </think> is 300, EOS 301; ids past 301 decode to nothing."""

    THINK_END, EOS = 300, 301
    eos_token_id = EOS
    unk_token_id = None

    def encode(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            if text.startswith("</think>", i):
                out.append(self.THINK_END)
                i += len("</think>")
            else:
                out.append(ord(text[i]) % 256)
                i += 1
        return out

    def decode(self, ids, skip_special_tokens=False):
        return "".join("</think>" if t == self.THINK_END else "" if t == self.EOS else chr(t) for t in ids if t < 302)

    def convert_tokens_to_ids(self, token):
        return self.THINK_END if token == "</think>" else None


def shown(prompt):
    """(first, second) responses as the model sees them in an RRM prompt."""
    body = prompt.split("### Assistant 1\n\n", 1)[1]
    first, rest = body.split("\n\n\n### Assistant 2\n\n", 1)
    return first, rest.split("\n\n## Analysis", 1)[0]


class FakeGenerate:
    """Scripted sampler. `policy(first, second, k)` -> (digit "1"/"2"/other, forced, p1) for the k-th sample of
    that prompt (k counts across calls, like fresh draws). Probe log-probs are log(p1), log(1 - p1) at the
    verdict-digit position and log(0.5) elsewhere (or None with probes=False)."""

    def __init__(self, tokenizer, policy, probes=True):
        self.tok, self.policy, self.probes = tokenizer, policy, probes
        self.calls, self.seen, self.tokens = [], {}, 0

    def __call__(self, model, prompts, cfg, progress=False):
        assert isinstance(cfg, SamplingConfig)
        self.calls.append((list(prompts), cfg))
        out = []
        for pi, prompt in enumerate(prompts):
            for s in range(cfg.n):
                k = self.seen.get(prompt, 0)
                self.seen[prompt] = k + 1
                digit, forced, p1 = self.policy(*shown(prompt), k)
                think = f"Let me compare them (sample {k}). "
                if forced:
                    head = self.tok.encode(think)
                    ids = head + self.tok.encode(SUFFIX) + self.tok.encode(digit + "}")
                    forced_at, digit_pos = len(head), len(head) + len(self.tok.encode(SUFFIX))
                else:
                    pre = self.tok.encode(think + "</think>\n\n\\boxed{Assistant ")
                    ids = pre + self.tok.encode(digit + "}")
                    forced_at, digit_pos = None, len(pre)
                lp = np.full((len(ids), 2), math.log(0.5), np.float32)
                lp[digit_pos] = [math.log(p1), math.log(1 - p1)]
                self.tokens += len(ids)
                out.append(
                    Completion(
                        pi,
                        s,
                        ids,
                        self.tok.decode(ids),
                        np.zeros(len(ids), np.float32),
                        "budget" if forced else "stop",
                        len(ids),
                        lp if self.probes else None,
                        forced_at,
                    )
                )
        return out


class FakeModel:
    """What a `Judge` needs of a model when `generate` is faked: a tokenizer."""

    tokenizer = ChatCharTokenizer()


@dataclasses.dataclass
class FakeCompletion:
    """The fields of a sampler `Completion` that a rollout reads."""

    token_ids: list
    text: str
    logprobs: np.ndarray
    finish_reason: str = "stop"
    num_tokens: int = 0
    forced_at: int | None = None
