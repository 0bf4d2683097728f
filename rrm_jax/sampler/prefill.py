"""The sampler's prefill scheduling (host side): which waiting prompts advance by one chunk in the next call.

A prompt is a :class:`Task` from the moment its samples' slots are reserved (:func:`assign`) until its last
chunk is in the cache; :func:`prefill_call` builds one ``SamplerLoop.prefill`` call from the waiting tasks.
:func:`window` sizes the cache prefix a call attends, for prefill and decode alike.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from rrm_jax.sampler.loop import PrefillChunk, SlotParams


@dataclasses.dataclass
class Task:
    """A prompt being prefilled: the slots of its samples (built in the first) and the tokens cached so far."""

    request: Any  # rrm_jax.sampler.engine.Request: ids, index, settings
    slots: list[tuple[int, int]]  # (slot, sample index)
    done: int = 0
    # (slot, its task or None, n): the first n tokens are copied from that slot's row once it holds them
    share: tuple[int, Any, int] | None = None

    @property
    def left(self) -> int:
        return len(self.request.ids) - self.done


def assign(queue, free, occupant) -> list[Task]:
    """Reserve free slots for the next waiting samples, one prefill task per distinct request."""
    tasks: dict[int, Task] = {}
    for r in free[: len(queue)]:
        req, q = queue.popleft()
        tasks.setdefault(id(req), Task(req, [])).slots.append((r, q))
        occupant[r] = (req, q)
    return list(tasks.values())


MIN_WINDOW_STEP = 128


def window(extent: int, step: int, cap: int) -> int:
    """Cache slots a call attends to cover slots ``[0, extent)``: few compiled shapes, little waste.

    A multiple of ``step`` (at least :data:`MIN_WINDOW_STEP`) up to 8 steps, then a multiple of a quarter of the
    power of two below ``extent`` (four windows per doubling), never past ``cap``. Attention reads the whole
    window, so a power-of-two window cost a 4-chunk prefill call twice the attention it needed, and a judge's
    decode over 760-token rows read a 1072-slot cache. Each window is a compiled program (~1-2 s on CPU), and
    attending to fewer than 128 more slots saves less than that: a 50-token prompt in 8-token chunks compiled 7
    prefill and 7 decode windows, now one of each.
    """
    step = max(step, MIN_WINDOW_STEP)
    if extent <= 8 * step:
        w = -(-extent // step) * step
    else:
        q = (1 << ((extent - 1).bit_length() - 1)) // 4
        w = -(-extent // q) * q
    return min(cap, max(w, step))


def prefill_call(loop, params, sampling, pending, chunk, max_rows, state, st, live):
    """One chunked-prefill call: up to ``max_rows`` waiting prompts, most tokens left first, advance a chunk.

    Rows per call are a power of two (at most log2(max_rows) + 1 shapes) and attend a :func:`window` of the
    cache; no row of a call is idle, so each prompt pays less than one chunk of padding. Prompts that finish
    leave ``pending``, their slots go live with their request's settings.
    """
    b = loop.shape.slots
    ready = [t for t in pending if t.share is None]  # a task waiting for a shared prefix is not fed yet
    n = min(len(ready), max_rows)
    rows = 1 << (n.bit_length() - 1)  # largest power of two <= n: no idle rows in the call
    # most tokens left first: the longest prompt never ends up alone in a tail of one-row calls
    group = sorted(ready, key=lambda t: -t.left)[:rows]
    tokens = np.zeros((rows, chunk), np.int32)
    lens, start, home, row = (np.zeros((rows,), np.int32) for _ in range(4))
    dest = np.full((b,), b, np.int32)
    src, pidx, sidx = (np.zeros((b,), np.int32) for _ in range(3))
    slot = SlotParams.empty(b, loop.shape.n_stops)  # unused dest entries keep these (they are dropped)
    j = 0
    for i, t in enumerate(group):
        ids = t.request.ids
        piece = ids[t.done : t.done + chunk]
        tokens[i, : len(piece)] = piece
        lens[i], start[i], home[i] = len(piece), t.done, t.slots[0][0]
        t.done += len(piece)
        if t.left:
            row[i] = home[i]
            continue
        row[i] = b  # finished: written to all its sample slots through dest
        for r, q in t.slots:
            dest[j], src[j], pidx[j], sidx[j] = r, i, t.request.index, q
            for k, v in t.request.slot_params.items():
                getattr(slot, k)[j] = v
            j += 1
    t0 = time.perf_counter()
    batch = PrefillChunk(
        tokens=tokens,
        lens=lens,
        start=start,
        home=home,
        row=row,
        dest=dest,
        src=src,
        prompt=pidx,
        sample=sidx,
        params=slot,
    )
    span = window(int(np.max(start + lens)), chunk, loop.shape.cache_len)
    state = loop.prefill(params, state, loop.place(batch), sampling, window=span)
    jax.block_until_ready(state.done)
    st.prefill_seconds += time.perf_counter() - t0
    st.prefill_calls += 1
    st.prefill_tokens += int(lens.sum())
    st.prefill_positions += rows * chunk
    for t in [t for t in group if not t.left]:
        pending.remove(t)
        st.prefill_rows += 1
        for r, _ in t.slots:
            live[r] = True
    return state
