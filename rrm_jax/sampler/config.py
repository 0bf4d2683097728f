"""``SamplingConfig``: how the sampler decodes (lengths, temperature, filters, stops, thinking budget, slots).

It is also the ``[sampling]`` table of the training recipes, loaded by :mod:`rrm_jax.core.configs`;
``None`` means "no limit" (``max_think_tokens = "none"``). Importing this module is free (no JAX).
"""

from __future__ import annotations

import dataclasses

from rrm_jax.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0.0 -> greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    n: int = 1  # samples per prompt (share ONE prefill)
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()  # the tokenizer's eos is added automatically when add_eos_stop=True
    add_eos_stop: bool = True
    stop_strings: tuple[str, ...] = ()
    max_think_tokens: int | None = None  # thinking budget
    think_end: str | tuple[int, ...] = "</think>"  # a string (tokenized) or token ids
    forced_suffix: str | tuple[int, ...] = "\n</think>\n\n\\boxed{Assistant "  # appended once when the budget runs out
    probe_token_ids: tuple[int, ...] = ()  # record log-probs of these ids at every step (judge soft scores)
    max_slots: int = 32  # continuous-batching slots (rows decoding at once)

    def __post_init__(self):
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 = greedy)"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 = off)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must lie in (0, 1]"),
            ("min_p", 0.0 <= self.min_p < 1.0, "must lie in [0, 1)"),
            ("n", self.n >= 1, "must be >= 1"),
            ("max_slots", self.max_slots >= 1, "must be >= 1"),
            ("max_think_tokens", self.max_think_tokens is None or self.max_think_tokens >= 0, "must be >= 0 or None"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"SamplingConfig.{name}={getattr(self, name)!r}: {why}")
        if any(not s for s in self.stop_strings):
            raise ConfigError("SamplingConfig.stop_strings: empty stop string")
