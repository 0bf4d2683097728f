"""What a request's text fields become: token ids, checked against the model (a ValueError names the field)."""

from __future__ import annotations

import numpy as np

from rrm_jax.core.api import Model
from rrm_jax.sampler.config import SamplingConfig


def encode(tokenizer, text: str, field: str) -> tuple[int, ...]:
    if tokenizer is None:
        raise ValueError(f"{field}={text!r} is a string but the model has no tokenizer: pass token ids")
    return tuple(int(t) for t in tokenizer.encode(text, add_special_tokens=False))


def token_seq(tokenizer, value, field: str, single_token: bool = False) -> tuple[int, ...]:
    if not isinstance(value, str):
        return tuple(int(t) for t in value)
    if single_token and tokenizer is not None:
        tid = tokenizer.convert_tokens_to_ids(value)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None) and tid >= 0:
            return (tid,)
    return encode(tokenizer, value, field)


def eos_ids(model: Model) -> set[int]:
    out = set()
    for e in (getattr(model.tokenizer, "eos_token_id", None), model.config.eos_token_id):
        if isinstance(e, int):
            out.add(e)
        elif isinstance(e, (list, tuple)):
            out.update(int(x) for x in e)
    return out


def prompt_ids(model: Model, prompt, field: str, max_new: int, room: int) -> np.ndarray:
    """``prompt`` (text or token ids) as int32 ids that fit the model with ``max_new`` new and ``room`` forced
    tokens; a ValueError naming ``field`` otherwise."""
    cfg = model.config
    ids = np.asarray(encode(model.tokenizer, prompt, field) if isinstance(prompt, str) else list(prompt))
    if ids.size == 0:
        raise ValueError(f"{field} is empty")
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{field} must be a string or a flat sequence of token ids")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise ValueError(f"{field} holds token ids outside [0, {cfg.vocab_size})")
    if ids.size + max_new + room > cfg.max_position_embeddings:
        raise ValueError(
            f"{field} has {ids.size} tokens; with max_new_tokens={max_new} (+{room} forced) it exceeds the context "
            f"(max_position_embeddings={cfg.max_position_embeddings})"
        )
    return ids.astype(np.int32)


def stop_ids(model: Model, config: SamplingConfig) -> set[int]:
    return set(int(t) for t in config.stop_token_ids) | (eos_ids(model) if config.add_eos_stop else set())


def forced_ids(tokenizer, config: SamplingConfig) -> tuple[int, ...]:
    """The forced verdict suffix as token ids: the one encoding the sampler, the judge, the trainer and the
    commands all plan and generate with (ids pass as they are; text needs the tokenizer)."""
    return token_seq(tokenizer, config.forced_suffix, "forced_suffix")
