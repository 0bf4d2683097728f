"""The sampling engine: requests come and go, slots are refilled as they free up, each request keeps its settings.

``Engine(model, plan, config)`` owns the slots of one :class:`~rrm_jax.sampler.loop.SamplerLoop` (its shapes from
:func:`rrm_jax.sampler.planner.plan`). :meth:`Engine.submit` queues a prompt with its own
:class:`SamplingConfig` (temperature, top-p, min-p, token limit, stop ids and strings, thinking budget, seed, n)
and returns its :class:`Request`; :meth:`Engine.step` runs one device call (a prefill chunk or a decode chunk) and
returns the completions it finished; :meth:`Engine.cancel` frees a request's slots at the next chunk. A request
submitted while others decode joins the running batch at the next refill. ``generate`` is a loop of ``step``.

How the steps interleave (continuous batching):

- prefill advances up to R waiting prompts by one chunk of C tokens each, at each prompt's own cache offset, so
  prompts of any lengths share a call. A prompt's last chunk copies its cache rows into the slots of all its
  samples (n samples share ONE prefill) and sets those slots' settings. While prompts wait, running rows decode
  only after ``max_stall`` prefill calls in a row, and then only ``prefill_steps`` steps, so rows that join soon
  share steps and a long prompt arriving mid-run never holds running rows back for long.
- decode runs up to ``chunk_steps`` single-token steps over all slots and returns early once enough slots have
  finished to refill them, so the host only intervenes between chunks, never per token.

Randomness is ``fold_in(fold_in(fold_in(key(seed), index), sample), step)``: a sample does not depend on batch
composition or slot placement. Stop token ids are checked on device; stop strings on the host between chunks on
the decoded text (the row is then truncated at the token that completes the string).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence

import jax
import numpy as np

from rrm_jax.core.api import Model
from rrm_jax.core.distributed import to_host
from rrm_jax.sampler.config import SamplingConfig
from rrm_jax.sampler.inputs import forced_ids, prompt_ids, stop_ids, token_seq
from rrm_jax.sampler.loop import BUDGET, LENGTH, NEVER, STOP, WILD, LoopParams, PrefillChunk, SamplerLoop, SlotParams
from rrm_jax.sampler.planner import Plan
from rrm_jax.sampler.prefill import Task, assign, prefill_call, window

_REASONS = {STOP: "stop", LENGTH: "length", BUDGET: "budget"}
# settings every slot of an engine shares (a shape, or the loop's shared values): a request must agree with them
_SHARED = ("top_k", "think_end", "forced_suffix", "probe_token_ids")


@dataclasses.dataclass
class Completion:
    prompt_index: int
    sample_index: int
    token_ids: list[int]
    text: str
    logprobs: np.ndarray  # [num_tokens] log-prob of each chosen token (temperature 1, unfiltered)
    finish_reason: str  # "stop" | "length" | "budget"
    num_tokens: int
    probe_logprobs: np.ndarray | None = None  # [num_tokens, len(probe_token_ids)]
    forced_at: int | None = None  # index in token_ids where the forced suffix starts (budget)


@dataclasses.dataclass
class GenerateStats:
    """What an engine did (``generate(..., return_stats=True)``; tests assert on these, benchmarks read the
    timings)."""

    rows: int = 0  # slots decoding at once
    cache_slots: int = 0  # S
    prefill_calls: int = 0
    prefill_rows: int = 0  # prompts run through the model (n samples share one)
    prefill_tokens: int = 0  # real prompt tokens prefilled
    prefill_positions: int = 0  # token positions computed by prefill (real + padding)
    prefill_waits: int = 0  # most prefill calls in a row that running rows waited for (continuous: <= max_stall)
    prefix_tokens: int = 0  # prompt tokens copied from a prefix another row holds instead of computed
    decode_chunks: int = 0
    decode_steps: int = 0  # while-loop iterations (each = one token for every live slot)
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


@dataclasses.dataclass(eq=False)
class Request:
    """A submitted prompt and its ``config.n`` samples; ``completions`` fill in as they finish."""

    ids: np.ndarray  # prompt token ids
    config: SamplingConfig
    index: int  # folded into every sample's key (``generate``: the prompt's position)
    slot_params: dict  # the SlotParams values of its slots
    stops: frozenset[int]
    # called from Engine.step after each decode chunk with (request, sample index, new token ids): streaming
    on_tokens: Callable[[Request, int, list[int]], None] | None = None
    completions: list[Completion | None] = dataclasses.field(default_factory=list)
    cancelled: bool = False
    submitted: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        return self.cancelled or all(c is not None for c in self.completions)


def _pad(xs, n: int, fill: int, left: bool = False) -> np.ndarray:
    xs = list(xs)
    return np.asarray(([fill] * (n - len(xs)) + xs) if left else (xs + [fill] * (n - len(xs))), np.int32)


# ------------------------------------------------------------------------------------------ the engine
class Engine:
    """Continuous batching over one compiled loop (see the module docstring). Single-threaded: a server drives
    ``submit``/``step`` from one thread."""

    def __init__(
        self,
        model: Model,
        plan: Plan,
        config: SamplingConfig,
        *,
        unroll_layers: bool | None = None,
        continuous: bool = True,
        chunk_steps: int = 32,
        refill_min: int | None = None,
        max_stall: int = 4,
        prefill_steps: int = 4,
        share_prefixes: bool = True,
        stats: GenerateStats | None = None,
    ):
        tok, shape = model.tokenizer, plan.shape
        self.model, self.plan, self.config = model, plan, config
        self.suffix = forced_ids(tok, config) if plan.budgets else ()
        think_end = token_seq(tok, config.think_end, "think_end", single_token=True) if plan.budgets else ()
        if plan.budgets and not self.suffix:
            raise ValueError("SamplingConfig.forced_suffix is empty but max_think_tokens is set")
        if len(self.suffix) > shape.suffix_cap or len(think_end) > shape.window:
            raise ValueError(f"the forced suffix / think_end do not fit the plan ({shape.suffix_cap}, {shape.window})")
        probes = tuple(int(t) for t in config.probe_token_ids)
        if len(probes) != shape.n_probes:
            raise ValueError(f"{len(probes)} probe_token_ids for a plan of {shape.n_probes}")
        if any(not 0 <= t < model.config.vocab_size for t in probes):
            raise ValueError(f"SamplingConfig.probe_token_ids must lie in [0, {model.config.vocab_size})")
        self._stops(config)  # before any device work
        self.loop = SamplerLoop.for_model(model, shape, unroll_layers)
        w = shape.window
        self.sampling = self.loop.place(
            LoopParams(
                suffix=_pad(self.suffix, shape.suffix_cap, 0),
                suffix_len=np.int32(len(self.suffix)),
                think_end=_pad(think_end, w, WILD, left=True) if think_end else np.full((w,), NEVER, np.int32),
                probes=np.asarray(probes, np.int32),
            )
        )
        self.stats = stats if stats is not None else GenerateStats()
        b = shape.slots
        self.stats.rows, self.stats.cache_slots = b, shape.cache_len
        self.continuous, self.chunk_steps, self.max_stall, self.prefill_steps = (
            continuous,
            chunk_steps,
            max_stall,
            prefill_steps,
        )
        self.refill_min = max(1, b // 4) if refill_min is None else max(1, refill_min)
        self.share_prefixes = share_prefixes
        self._held: dict[int, Task] = {}  # slot -> the task whose prompt its cache rows hold (or are building)
        self.state = self.loop.init_state()
        self.weights = self.loop.weights(model.state)
        self.queue: deque[tuple[Request, int]] = deque()  # samples waiting for a slot
        self.occupant: list[tuple[Request, int] | None] = [None] * b
        self.live = [False] * b  # decoding on device (a reserved slot waits for its prompt's prefill first)
        self.pending: list[Task] = []
        self._stop_checked = [0] * b
        self._sent = [0] * b  # tokens handed to on_tokens so far
        self._kill = np.zeros((b,), bool)
        self._counts = np.zeros((b,), np.int64)  # tokens chosen per slot, as of the last chunk
        self._stalled = 0

    # -- requests ------------------------------------------------------------------------------------
    def check(self, config: SamplingConfig) -> None:
        """Refuse settings this engine's compiled loop cannot honour (ValueError naming the field)."""
        for name in _SHARED:
            if getattr(config, name) != getattr(self.config, name):
                raise ValueError(f"{name}={getattr(config, name)!r}: this engine runs {getattr(self.config, name)!r}")
        if config.max_new_tokens > self.plan.max_new:
            raise ValueError(f"max_new_tokens={config.max_new_tokens}: this engine allows up to {self.plan.max_new}")
        if config.max_think_tokens is not None and not self.plan.budgets:
            raise ValueError("max_think_tokens: this engine was planned without thinking budgets")
        if config.stop_strings and self.model.tokenizer is None:
            raise ValueError("SamplingConfig.stop_strings needs a model with a tokenizer")

    def _stops(self, config: SamplingConfig) -> tuple[set[int], np.ndarray]:
        """The stop ids of ``config`` and their padded table; a ValueError when they do not fit the plan."""
        stops, n, vocab = stop_ids(self.model, config), self.plan.shape.n_stops, self.model.config.vocab_size
        if len(stops) > n or any(not 0 <= t < vocab for t in stops):
            raise ValueError(f"stop_token_ids: at most {n}, each in [0, {vocab})")
        return stops, _pad(sorted(stops), n, NEVER)

    def submit(
        self,
        prompt: str | Sequence[int],
        config: SamplingConfig | None = None,
        *,
        index: int = 0,
        on_tokens: Callable[[Request, int, list[int]], None] | None = None,
    ) -> Request:
        """Queue ``prompt`` (text or token ids) for ``config.n`` samples; returns its :class:`Request`."""
        config = self.config if config is None else config
        self.check(config)
        room = len(self.suffix) if config.max_think_tokens is not None else 0
        ids = prompt_ids(self.model, prompt, "the prompt", config.max_new_tokens, room)
        if ids.size > self.plan.max_prompt:
            raise ValueError(
                f"the prompt has {ids.size} tokens; this engine holds prompts of up to {self.plan.max_prompt}"
            )
        stops, table = self._stops(config)
        # a budget at or past the token limit is the limit: the length would end the sample before the budget
        # forced its verdict (the suffix comes on top of the limit)
        budget = -1 if config.max_think_tokens is None else min(config.max_think_tokens, config.max_new_tokens)
        slot_params = dict(
            temperature=np.float32(config.temperature),
            top_p=np.float32(config.top_p),
            min_p=np.float32(config.min_p),
            budget=np.int32(budget),
            limit=np.int32(config.max_new_tokens),
            seed=np.int32(config.seed),
            stops=table,
        )
        req = Request(ids, config, int(index), slot_params, frozenset(stops), on_tokens)
        req.completions = [None] * config.n
        self.queue.extend((req, q) for q in range(config.n))
        return req

    def cancel(self, req: Request) -> None:
        """Drop ``req``: its waiting samples leave the queue, its running ones end at the next decode chunk."""
        req.cancelled = True
        self.queue = deque(x for x in self.queue if x[0] is not req)

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.pending or any(self.live))

    @property
    def slots_busy(self) -> int:
        return sum(o is not None for o in self.occupant)

    # -- one step ------------------------------------------------------------------------------------
    def step(self) -> list[Completion]:
        """One device call: refill free slots, then a prefill chunk or a decode chunk; the completions it ended."""
        b, st = self.loop.shape.slots, self.stats
        free = [r for r in range(b) if self.occupant[r] is None]
        if self.queue and free and (self.continuous or len(free) == b):
            tasks = assign(self.queue, free, self.occupant)
            for r in free:  # a refilled slot starts fresh (a pending kill was for its previous request)
                self._stop_checked[r] = self._sent[r] = 0
                self._kill[r] = False
                self._counts[r] = 1
            # rows refilled now keep their old prompt until this step's prefill call, after the prefix copies:
            # a new prompt may share from them as from the rows that the new prompts before it are building
            holders = list(self._held.items())
            for t in tasks:
                if self.share_prefixes:
                    self._find_prefix(t, holders)
                holders += [(r, t) for r, _ in t.slots]
                self._held.update((r, t) for r, _ in t.slots)
            self.pending += tasks
        if self.share_prefixes:
            self._copy_prefixes()
        if any(t.share is None for t in self.pending):
            self.state = prefill_call(
                self.loop,
                self.model.state,
                self.sampling,
                self.pending,
                self.plan.prefill_chunk,
                self.plan.prefill_rows,
                self.state,
                st,
                self.live,
            )
        n_live, waiting = sum(self.live), sum(len(t.slots) for t in self.pending)
        if not n_live:
            return []
        if waiting and (not self.continuous or self._stalled < self.max_stall):
            self._stalled += 1
            st.prefill_waits = max(st.prefill_waits, self._stalled)
            return []
        self._stalled = 0
        return self._decode(waiting)

    # -- prefix sharing ----------------------------------------------------------------------------------
    def _find_prefix(self, task: Task, holders) -> None:
        """The longest prefix, in whole prefill chunks, that another row holds or is building (``task.share``);
        ``holders`` are (slot, task whose prompt the slot's rows hold)."""
        ids, chunk = task.request.ids, self.plan.prefill_chunk
        cap = (len(ids) - 1) // chunk * chunk  # the last chunk is always computed: it gives the first token
        best = (0, None, None)
        if cap < chunk:
            return
        for slot, parent in holders:
            building = parent.done < len(parent.request.ids)
            if building and slot != parent.slots[0][0]:
                continue  # a prompt still being prefilled is only in its home row
            other = parent.request.ids
            n = min(cap, len(other))
            same = np.flatnonzero(ids[:n] != other[:n])
            shared = (int(same[0]) if same.size else n) // chunk * chunk
            if shared > best[0]:
                best = (shared, slot, parent if building else None)
        if best[0]:
            task.share = (best[1], best[2], best[0])

    def _copy_prefixes(self) -> None:
        """Copy every waiting shared prefix whose source row now holds it (one device call)."""
        ready = [t for t in self.pending if t.share and (t.share[1] is None or t.share[1].done >= t.share[2])]
        if not ready:
            return
        b = self.loop.shape.slots
        src, dst, n = np.zeros((b,), np.int32), np.full((b,), b, np.int32), np.zeros((b,), np.int32)
        for i, t in enumerate(ready):
            src[i], dst[i], n[i] = t.share[0], t.slots[0][0], t.share[2]
            t.done, t.share = t.share[2], None
            self.stats.prefix_tokens += int(n[i])
        self.state = self.loop.share_prefix(self.state, *self.loop.place((src, dst, n)))

    def _decode(self, waiting: int) -> list[Completion]:
        b, st, loop = self.loop.shape.slots, self.stats, self.loop
        occ, live = self.occupant, self.live
        for r in range(b):
            if live[r] and occ[r][0].cancelled:
                self._kill[r] = True
        n_done = b - sum(live)
        queued = len(self.queue)
        threshold = n_done + min(queued, self.refill_min) if (self.continuous and queued) else b + 1
        # between two prefill calls only a few steps: a decode step costs about the same with few rows as with
        # all, so rows still prefilling should join soon
        n_run = min(self.chunk_steps, self.prefill_steps) if waiting else self.chunk_steps
        t0 = time.perf_counter()
        # the longest live row's prompt, tokens so far and this chunk's steps: slots past it hold nothing
        extent = max(len(occ[r][0].ids) + int(self._counts[r]) for r in range(b) if live[r]) + n_run
        span = window(extent, self.plan.prefill_chunk, loop.shape.cache_len)
        n_steps, thresh = loop.place((np.int32(n_run), np.int32(threshold)))
        self.state, steps = loop.decode(
            self.model.state, self.weights, self.state, self.sampling, loop.place_rows(self._kill), n_steps, thresh,
            window=span,
        )  # fmt: skip
        host = to_host({"done": self.state.done, "count": self.state.count, "steps": steps})
        self._counts = np.array(host["count"])
        st.decode_seconds += time.perf_counter() - t0
        st.decode_chunks += 1
        st.decode_steps += int(host["steps"])
        self._kill[:] = False
        running = [r for r in range(b) if live[r]]
        finished = [r for r in running if host["done"][r]]
        watch = [r for r in running if occ[r][0].config.stop_strings or occ[r][0].on_tokens is not None]
        if not finished and not watch:
            return []
        fields = ("out_tok", "out_lp", "out_probe", "reason", "forced_at")
        arrays = to_host({k: getattr(self.state, k) for k in fields})
        out = []
        for r in running:
            req, q = occ[r]
            n_tok = int(host["count"][r])
            hit = None
            if req.config.stop_strings:
                hit = _stop_string_hit(
                    self.model.tokenizer, arrays["out_tok"][r], self._stop_checked[r], n_tok, req.config.stop_strings
                )
                self._stop_checked[r] = n_tok
            if hit is None and not host["done"][r]:
                self._stream(req, q, r, arrays, n_tok)
                continue
            occ[r], live[r] = None, False
            if req.cancelled:
                continue
            if hit is not None:
                n_tok, text = hit
                reason = "stop"
                if not host["done"][r]:
                    self._kill[r] = True
            else:
                reason, text = _REASONS[int(arrays["reason"][r])], None
            self._stream(req, q, r, arrays, n_tok)
            fa = int(arrays["forced_at"][r])
            fa = fa if 0 <= fa < n_tok else None  # a stop string may end the row before the budget did
            if fa is not None:
                reason = "budget"
            c = _completion(req, q, arrays, r, n_tok, reason, fa, text, self.model.tokenizer, self.loop.shape.n_probes)
            req.completions[q] = c
            st.generated_tokens += c.num_tokens
            out.append(c)
        return out

    def _stream(self, req: Request, q: int, r: int, arrays, n_tok: int) -> None:
        if req.on_tokens is not None and n_tok > self._sent[r]:
            req.on_tokens(req, q, [int(t) for t in arrays["out_tok"][r, self._sent[r] : n_tok]])
            self._sent[r] = n_tok

    def programs(self) -> list[tuple[str, int, int]]:
        """Every (call, rows, window) this engine may compile: each attention window (:func:`window` of every
        extent the cache holds) for a decode chunk and, at each power-of-two row count, for a prefill call."""
        chunk, cache = self.plan.prefill_chunk, self.loop.shape.cache_len
        windows = sorted({window(e, chunk, cache) for e in range(1, cache + 1)})
        rows = [1 << i for i in range(self.plan.prefill_rows.bit_length())]
        return [("decode", 0, w) for w in windows] + [("prefill", r, w) for r in rows for w in windows]

    def warmup(self, on_program: Callable[[int, int], None] | None = None) -> int:
        """Run each of :meth:`programs` once on a scratch state, then start from a fresh one, so that no request
        waits for a compile (a server's first requests of each size would otherwise take seconds to minutes).
        ``on_program(done, total)`` reports progress; returns how many programs ran. Only before any submit."""
        if self.busy:
            raise RuntimeError("Engine.warmup runs before the first request")
        loop, b, chunk = self.loop, self.loop.shape.slots, self.plan.prefill_chunk
        todo = self.programs()
        for i, (kind, rows, w) in enumerate(todo):
            if kind == "decode":
                steps, thresh = loop.place((np.int32(0), np.int32(b + 1)))
                kill = loop.place_rows(np.zeros((b,), bool))
                self.state, _ = loop.decode(
                    self.model.state, self.weights, self.state, self.sampling, kill, steps, thresh, window=w
                )
            else:
                home = np.arange(rows, dtype=np.int32) % b
                unused = np.full((b,), b, np.int32)
                batch = PrefillChunk(
                    tokens=np.zeros((rows, chunk), np.int32),
                    lens=np.ones((rows,), np.int32),
                    start=np.zeros((rows,), np.int32),
                    home=home,
                    row=home,
                    dest=unused,
                    src=np.zeros((b,), np.int32),
                    prompt=np.zeros((b,), np.int32),
                    sample=np.zeros((b,), np.int32),
                    params=SlotParams.empty(b, loop.shape.n_stops),
                )
                self.state = loop.prefill(self.model.state, self.state, loop.place(batch), self.sampling, window=w)
            if on_program is not None:
                jax.block_until_ready(self.state.done)
                on_program(i + 1, len(todo))
        src, dst, n = loop.place((np.zeros((b,), np.int32), np.full((b,), b, np.int32), np.zeros((b,), np.int32)))
        self.state = loop.share_prefix(self.state, src, dst, n)
        self.state = loop.init_state()
        return len(todo) + 1

    def run(self, on_completion: Callable[[Completion], None] | None = None) -> None:
        """Step until every submitted request is done."""
        while self.busy:
            for c in self.step():
                if on_completion is not None:
                    on_completion(c)


def _stop_string_hit(tok, out_tok, checked: int, n_tok: int, stop_strings) -> tuple[int, str] | None:
    """The shortest prefix (>= checked) whose decoded text contains a stop string -> (n tokens, text)."""
    toks = [int(t) for t in out_tok[:n_tok]]
    full = tok.decode(toks, skip_special_tokens=False)
    if not any(s in full for s in stop_strings):
        return None
    for j in range(max(1, checked), n_tok + 1):
        text = tok.decode(toks[:j], skip_special_tokens=False)
        ends = [text.index(s) + len(s) for s in stop_strings if s in text]
        if ends:
            return j, text[: min(ends)]
    return None


def _completion(req: Request, q, arrays, r, n_tok, reason, forced_at, text, tok, n_probes: int) -> Completion:
    toks = [int(t) for t in arrays["out_tok"][r, :n_tok]]
    if text is None:
        ends_in_stop = (reason == "stop" or reason == "budget") and toks and toks[-1] in req.stops
        body = toks[:-1] if ends_in_stop else toks
        text = tok.decode(body, skip_special_tokens=False) if tok is not None else ""
    return Completion(
        prompt_index=req.index,
        sample_index=q,
        token_ids=toks,
        text=text,
        logprobs=np.asarray(arrays["out_lp"][r, :n_tok], np.float32),
        finish_reason=reason,
        num_tokens=n_tok,
        probe_logprobs=np.asarray(arrays["out_probe"][r, :n_tok], np.float32) if n_probes else None,
        forced_at=forced_at,
    )
