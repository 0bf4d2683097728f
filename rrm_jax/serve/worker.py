"""One engine, driven by one thread, shared by every endpoint: requests from any thread or event loop join its batches.

:class:`EngineWorker` owns an :class:`~rrm_jax.sampler.engine.Engine`. Callers hand it prompts from any thread
(:meth:`submit`, or :meth:`generate` with ``generate``'s signature, which the judge calls) and the worker thread
admits them between device calls, so a request that arrives while others decode joins the running batch at the
next refill. Completions, streamed tokens and errors go back through callbacks the caller chose (an asyncio
future, a thread event). :meth:`stop` finishes every accepted request before the thread ends.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence

from rrm_jax.sampler.config import SamplingConfig
from rrm_jax.sampler.engine import Completion, Engine, Request

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250)


@dataclasses.dataclass
class Counters:
    """What ``GET /metrics`` reports (read without a lock: each field is one atomic store)."""

    requests: int = 0  # engine requests finished
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    latency_counts: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    started: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class Job:
    prompt: str | Sequence[int]
    config: SamplingConfig
    index: int
    on_done: Callable[[Request | None, BaseException | None], None]  # from the worker thread
    on_tokens: Callable | None = None
    request: Request | None = None
    cancelled: bool = False


class EngineWorker:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.counters = Counters()
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._jobs: dict[int, Job] = {}  # id(request) -> job, for the worker thread only
        self._cancel: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._stopping = False
        self.waiting = 0  # jobs handed in and not yet finished
        self._thread = threading.Thread(target=self._run, name="rrm-jax-engine", daemon=True)
        self._thread.start()

    # -- from any thread ---------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        if self._stopping:
            raise RuntimeError("the server is shutting down")
        self.waiting += 1
        self._inbox.put(job)
        return job

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        self._cancel.put(job)
        self._inbox.put(None)  # wake the thread if it sleeps

    def generate(self, model, prompts: Sequence, config: SamplingConfig, *, progress: bool = False) -> list[Completion]:
        """``rrm_jax.sampler.generate``'s contract through the shared engine (blocks the calling thread)."""
        del model, progress
        done = threading.Event()
        left = [len(prompts)]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def finished(req, err):
            if err is not None:
                errors.append(err)
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        jobs = [self.submit(Job(p, config, i, finished)) for i, p in enumerate(prompts)]
        done.wait()
        if errors:
            raise errors[0]
        return [c for j in jobs for c in j.request.completions]

    def stop(self) -> None:
        """Finish every accepted job, then end the thread."""
        self._stopping = True
        self._inbox.put(None)
        self._thread.join()

    # -- the worker thread -------------------------------------------------------------------------------
    def _admit(self, job: Job) -> None:
        try:
            job.request = self.engine.submit(job.prompt, job.config, index=job.index, on_tokens=job.on_tokens)
        except Exception as e:  # noqa: BLE001 - a request the engine refuses goes back to its caller
            self._finish(job, e)
            return
        self._jobs[id(job.request)] = job
        if job.cancelled:
            self.engine.cancel(job.request)

    def _finish(self, job: Job, err: BaseException | None) -> None:
        self.waiting -= 1
        c = self.counters
        if err is not None:
            c.errors += 1
        elif job.request is not None and not job.request.cancelled:
            c.requests += 1
            c.prompt_tokens += len(job.request.ids)
            c.completion_tokens += sum(x.num_tokens for x in job.request.completions)
            took = time.perf_counter() - job.request.submitted
            c.latency_sum += took
            c.latency_counts[sum(took > b for b in LATENCY_BUCKETS)] += 1
        try:
            job.on_done(job.request, err)
        except Exception:  # noqa: BLE001 - a caller's callback must not stop the engine
            pass

    def _run(self) -> None:
        while True:
            try:  # sleep while idle; between device calls admit everything that arrived
                job = self._inbox.get() if not self.engine.busy else self._inbox.get_nowait()
                while True:
                    if job is not None:
                        self._admit(job)
                    job = self._inbox.get_nowait()
            except queue.Empty:
                pass
            eng = self.engine
            while not self._cancel.empty():
                j = self._cancel.get()
                if j.request is not None and not j.request.done:
                    eng.cancel(j.request)
            if eng.busy:
                try:
                    eng.step()
                except Exception as e:  # noqa: BLE001 - a device failure fails every job in flight, not the thread
                    for j in list(self._jobs.values()):
                        self._jobs.pop(id(j.request), None)
                        self._finish(j, e)
                    self._reset()
                    continue
            for key, j in list(self._jobs.items()):
                if j.request.done:
                    del self._jobs[key]
                    self._finish(j, None)
            if self._stopping and not eng.busy and not self._jobs and self._inbox.empty():
                return

    def _reset(self) -> None:
        """A fresh engine of the same plan after a failed device call (its donated state is gone)."""
        e = self.engine
        self.engine = Engine(e.model, e.plan, e.config, stats=e.stats)
