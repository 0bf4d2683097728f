"""Stable seeds from integers: the one formula for deriving a seed, and the seeded order coin.

Both are pure functions of their integer arguments, identical across processes, platforms and runs (never
Python's salted ``hash()``), so a resumed or re-chunked run draws exactly what an uninterrupted one would.
Every part is taken modulo 2**32, so negative or large ids are fine.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (a sampling seed for one call, one chunk, one tournament round)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def show_first_b(seed: int, item: int) -> bool:
    """The seeded coin of swap="random": True -> the model sees (b, a). The judge and the evaluation both
    flip it, so a pair keeps its order whichever of them decides it."""
    return bool(np.random.default_rng([int(seed) & 0xFFFFFFFF, int(item) & 0xFFFFFFFF]).integers(2))
