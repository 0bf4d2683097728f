"""Group-relative advantages: one scalar per completion from the rewards of its prompt's G samples.

Rewards arrive prompt-major (``[p0 s0, p0 s1, ..., p1 s0, ...]``, the sampler's order), so a flat
``[P*G]`` vector reshapes to ``[P, G]`` groups. All three estimators are zero for a group whose
samples all got the same reward: such a group carries no learning signal.
"""

from __future__ import annotations

import numpy as np

METHODS = ("grpo", "drgrpo", "rloo")


def group_rewards(rewards, group_size: int) -> np.ndarray:
    r = np.asarray(rewards, np.float32)
    if r.ndim == 1:
        if group_size < 1 or r.size % group_size:
            raise ValueError(f"{r.size} rewards do not split into groups of {group_size}")
        r = r.reshape(-1, group_size)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [P*G] or [P, G], got shape {r.shape}")
    return r


def grpo(rewards, group_size: int, eps: float = 1e-6) -> np.ndarray:
    """(r - group mean) / (group std + eps), std with Bessel's correction as in DeepSeekMath/TRL/verl."""
    r = group_rewards(rewards, group_size)
    g = r.shape[1]
    centred = r - r.mean(axis=1, keepdims=True)
    if g == 1:
        return np.zeros(r.size, np.float32)
    std = r.std(axis=1, ddof=1, keepdims=True)
    return (centred / (std + eps)).reshape(-1).astype(np.float32)


def drgrpo(rewards, group_size: int) -> np.ndarray:
    """Dr.GRPO (Liu et al. 2025): r - group mean; dividing by the std up-weights near-unanimous groups."""
    r = group_rewards(rewards, group_size)
    return (r - r.mean(axis=1, keepdims=True)).reshape(-1).astype(np.float32)


def rloo(rewards, group_size: int) -> np.ndarray:
    """REINFORCE leave-one-out: r_i - mean of the other G-1 rewards (= G/(G-1) * (r_i - mean))."""
    r = group_rewards(rewards, group_size)
    g = r.shape[1]
    if g == 1:
        return np.zeros(r.size, np.float32)
    others = (r.sum(axis=1, keepdims=True) - r) / (g - 1)
    return (r - others).reshape(-1).astype(np.float32)


def compute(rewards, group_size: int, method: str = "grpo", eps: float = 1e-6) -> np.ndarray:
    """Flat ``[P*G]`` advantages with the named estimator."""
    if method == "grpo":
        return grpo(rewards, group_size, eps)
    if method == "drgrpo":
        return drgrpo(rewards, group_size)
    if method == "rloo":
        return rloo(rewards, group_size)
    raise ValueError(f"unknown advantage method {method!r}; choose one of {METHODS}")
