"""Dynamic batching: one queue and one inference thread per served model version.

The batcher never idles: when the runtime is free, whatever is queued runs at once (a lone
request alone), and requests that arrive while a batch runs form the next one, up to
`max_batch_size` observations (continuous batching: batches grow with the load, not with a
timer). `max_queue_delay` is an optional cap for those who want fuller batches at low load:
when set, a batch may wait up to that long after its first request arrived for more
requests (time spent waiting for the busy thread counts against it). The thread waits on a
condition variable and runs the runtime off the event loop, which keeps accepting requests.

One exception saves a lone request two thread hand-overs (a futex wake and a GIL hand-off
each way, most of what batching costs a request at low load): when the runtime is idle,
nothing is queued, no `max_queue_delay` asks requests to wait for company, the request is
small (at most `INLINE_MAX_ROWS` candidate rows) and small requests have been measured to run
in under `inline_below_s`, it runs at once on the calling
(event-loop) thread. The loop is then blocked for about that long, as it is while it parses a
large body; a slower model, a larger request or any queue goes to the thread as before.

Requests are never split. A request whose deadline has passed when its batch closes is
dropped before inference (DeadlineExceeded). Requests with different K share a batch:
`group` (the default) runs each K as its own call; `pad` widens every row to the batch's
largest K with copies of its own noise (one call; the result is unchanged bit for bit, see
`noise.pad_candidates`). benchmarks/serve.py measured group 1.3x pad's throughput on the
reference-size MLP with K=1 and K=8 mixed: padding makes a K=1 row cost as much as a K=8 one.
The batch-size histogram observes the observations that really ran together (late and
abandoned requests excluded).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from server.bundle_loader import Outputs
from server.errors import DeadlineExceeded, InferenceFailed, InvalidInput, ServingError, Unavailable
from server.noise import pad_candidates
from server.runner import PolicyRuntime

logger = logging.getLogger("mfql.batcher")


@dataclass
class PendingRequest:
    observation: np.ndarray  # [B, obs_dim] float32
    noise: np.ndarray  # [B, K, action_dim] float32
    deadline: float | None  # time.perf_counter() value; None: no deadline
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return self.observation.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.noise.shape[1]


@dataclass(frozen=True)
class BatchedResult:
    """One request's share of a batch: its outputs (candidates cut back to its own K) and timings."""

    outputs: Outputs
    queue_ms: float
    inference_ms: float
    batch_rows: int  # observations in the batch it ran in


class BatchObserver:
    """What a batcher reports; the default reports nothing (metrics.py has the Prometheus one)."""

    def batch_done(self, rows: int, inference_s: float, queue_s: list[float]) -> None: ...

    def queue_depth(self, rows: int) -> None: ...

    def unloaded(self) -> None: ...


def run_padded(runtime: PolicyRuntime, batch: list[PendingRequest]) -> list[Outputs]:
    if len(batch) == 1:
        return [runtime(batch[0].observation, batch[0].noise)]
    width = max(r.num_candidates for r in batch)
    observation = np.concatenate([r.observation for r in batch])
    noise = np.concatenate([pad_candidates(r.noise, width) for r in batch])
    return split_outputs(runtime(observation, noise), batch)


def run_grouped(runtime: PolicyRuntime, batch: list[PendingRequest]) -> list[Outputs]:
    if len(batch) == 1:  # a lone request (the common case at low load): no copies, no split
        return [runtime(batch[0].observation, batch[0].noise)]
    results: list[Outputs | None] = [None] * len(batch)
    by_k: dict[int, list[int]] = collections.defaultdict(list)
    for index, request in enumerate(batch):
        by_k[request.num_candidates].append(index)
    for indices in by_k.values():
        group = [batch[i] for i in indices]
        observation = np.concatenate([r.observation for r in group])
        noise = np.concatenate([r.noise for r in group])
        for index, outputs in zip(indices, split_outputs(runtime(observation, noise), group), strict=True):
            results[index] = outputs
    return results


def split_outputs(outputs: Outputs, batch: list[PendingRequest]) -> list[Outputs]:
    shares, start = [], 0
    for request in batch:
        rows = slice(start, start + request.rows)
        shares.append(
            {
                "action": outputs["action"][rows],
                "q_value": outputs["q_value"][rows],
                "candidates": outputs["candidates"][rows, : request.num_candidates],
            }
        )
        start += request.rows
    return shares


STRATEGIES: dict[str, Callable[[PolicyRuntime, list[PendingRequest]], list[Outputs]]] = {
    "pad": run_padded,
    "group": run_grouped,
}


INLINE_MAX_ROWS = 32  # observations x K of a request that may run inline (see the module doc)
SMALL_RUN_SMOOTHING = 0.2  # weight of the newest small-request inference time in its running mean


class DynamicBatcher:
    """`await batcher.submit(observation, noise, deadline)` -> BatchedResult, from the event loop."""

    def __init__(
        self,
        runtime: PolicyRuntime,
        *,
        name: str,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        mixed_candidates: str = "group",
        observer: BatchObserver | None = None,
        inline_below_s: float = 0.0,
    ):
        self.runtime = runtime
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.inline_below_s = inline_below_s
        self._small_run_s: float | None = None  # running mean of small lone requests' inference time
        self._inline = False  # a request runs on the calling thread: the worker thread must wait
        self._run_batch = STRATEGIES[mixed_candidates]
        self._observer = observer or BatchObserver()
        self._queue: collections.deque[PendingRequest] = collections.deque()
        self._queued_rows = 0
        self._running = 0  # requests taken off the queue and not yet answered
        self._waiting = False  # the thread waits on the condition (else it runs a batch)
        self._closing = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._work, name=f"infer-{name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Requests queued or running: zero means drained."""
        with self._condition:
            return len(self._queue) + self._running

    @property
    def idle(self) -> bool:
        """Nothing queued or running and the worker waiting: a small request now may run inline."""
        with self._condition:
            return not self._queue and self._running == 0 and self._waiting

    async def submit(
        self, observation: np.ndarray, noise: np.ndarray, deadline: float | None
    ) -> BatchedResult:
        rows = observation.shape[0]
        if rows > self.max_queue_size:
            raise InvalidInput(
                f"observations: {rows} in one request, this server queues at most {self.max_queue_size}"
            )
        loop = asyncio.get_running_loop()
        request = PendingRequest(observation, noise, deadline, loop.create_future(), loop)
        with self._condition:
            if self._closing:
                raise self._unloading()
            if self._queued_rows + rows > self.max_queue_size:
                raise Unavailable(
                    f"queue of {self.name} is full ({self._queued_rows} observations waiting, "
                    f"limit {self.max_queue_size}); retry later",
                    retry_after=1,
                )
            inline = self._may_run_inline(request)
            if inline:
                self._inline = True
                self._running += 1
            else:
                self._queue.append(request)
                self._queued_rows += rows
            # Waking the thread costs a futex call and a GIL hand-over (a fifth of a REST
            # request's CPU when done per request): only a waiting thread needs it; a busy one
            # takes the queue when its batch is done.
            if self._waiting and not inline:
                self._condition.notify()
        if inline and await self._still_alone(request):
            return self._run_inline(request)
        self._observer.queue_depth(self._queued_rows)
        return await request.future

    async def _still_alone(self, request: PendingRequest) -> bool:
        """Whether a request that claimed the runtime to run inline is still alone after one yield.

        The claim (`_inline`) makes requests arriving meanwhile queue. Yielding once lets the
        requests this loop has already read reach `submit` too: under load they do, and then the
        claimant joins the queue at its head and they run as one batch on the thread; without
        the yield, each request would run inline in turn and batching would never start.
        """
        try:
            await asyncio.sleep(0)
        except BaseException:
            self._release_inline_claim(requeue=None)
            raise
        with self._condition:
            if not self._queue and not self._closing:
                return True
        self._release_inline_claim(requeue=request)
        return False

    def _release_inline_claim(self, requeue: PendingRequest | None) -> None:
        with self._condition:
            self._inline = False
            self._running -= 1
            if requeue is not None:
                if self._closing:
                    raise self._unloading()
                self._queue.appendleft(requeue)
                self._queued_rows += requeue.rows
            if self._queue and self._waiting:
                self._condition.notify()

    def _unloading(self) -> Unavailable:
        return Unavailable(f"model version {self.name} is being unloaded; retry", retry_after=1)

    def _may_run_inline(self, request: PendingRequest) -> bool:
        """Called with the lock held: see the module doc for when a request runs inline."""
        return (
            self.inline_below_s > 0
            and self.max_queue_delay_s == 0  # a delay asks a lone request to wait for company
            and self._small_run_s is not None
            and self._small_run_s < self.inline_below_s
            and request.rows * request.num_candidates <= INLINE_MAX_ROWS
            and not self._queue
            and self._running == 0
            and self._waiting  # the worker is idle, not about to pick up a batch
            and not self._inline
        )

    def _run_inline(self, request: PendingRequest) -> BatchedResult:
        try:
            if request.deadline is not None and time.perf_counter() > request.deadline:
                raise DeadlineExceeded(
                    "deadline passed before inference could start; dropped without computing"
                )
            started = time.perf_counter()
            try:
                (outputs,) = self._run_batch(self.runtime, [request])
            except Exception as exc:  # noqa: BLE001 - as in _execute: this request fails, not the server
                logger.exception("inference failed", extra={"model": self.name, "requests": 1})
                raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from exc
            inference_s = time.perf_counter() - started
            self._note_small_run(request, inference_s)
            queue_s = started - request.enqueued
            self._observer.batch_done(request.rows, inference_s, [queue_s])
            return BatchedResult(outputs, queue_s * 1e3, inference_s * 1e3, request.rows)
        finally:
            with self._condition:
                self._inline = False
                self._running -= 1
                if self._queue and self._waiting:  # another thread's loop queued meanwhile
                    self._condition.notify()

    def _note_small_run(self, request: PendingRequest, inference_s: float) -> None:
        if request.rows * request.num_candidates > INLINE_MAX_ROWS:
            return
        previous = self._small_run_s
        self._small_run_s = (
            inference_s if previous is None else previous + SMALL_RUN_SMOOTHING * (inference_s - previous)
        )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after the batch in progress; requests still queued get 503."""
        self.stop()
        self._thread.join(timeout)

    def stop(self) -> None:
        """Like close(), without waiting for the thread: safe to call on the event loop."""
        with self._condition:
            self._closing = True
            left = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._condition.notify()
        for request in left:
            _resolve_soon(request, Unavailable(f"model version {self.name} was unloaded; retry"))
        self._observer.unloaded()

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = self._drop_late(batch)
            if live:
                self._execute(live)
            with self._condition:
                self._running -= len(batch)

    def _next_batch(self) -> list[PendingRequest] | None:
        with self._condition:
            while (not self._queue or self._inline) and not self._closing:
                self._wait(None)
            if self._closing:
                return None
            close_at = self._queue[0].enqueued + self.max_queue_delay_s
            while self._queued_rows < self.max_batch_size and not self._closing:
                remaining = close_at - time.perf_counter()
                if remaining <= 0:
                    break
                self._wait(remaining)
            batch, rows = [], 0
            while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch_size):
                request = self._queue.popleft()
                batch.append(request)
                rows += request.rows
            self._queued_rows -= rows
            self._running += len(batch)
            depth = self._queued_rows
        self._observer.queue_depth(depth)
        return batch

    def _wait(self, timeout: float | None) -> None:
        self._waiting = True
        self._condition.wait(timeout)
        self._waiting = False

    def _drop_late(self, batch: list[PendingRequest]) -> list[PendingRequest]:
        now = time.perf_counter()
        live = []
        for request in batch:
            if request.future.cancelled():  # the client went away: nothing to compute
                continue
            if request.deadline is not None and now > request.deadline:
                late_ms = (now - request.deadline) * 1e3
                waited_ms = (now - request.enqueued) * 1e3
                _resolve_soon(
                    request,
                    DeadlineExceeded(
                        f"deadline passed {late_ms:.1f} ms before inference could start "
                        f"(queued {waited_ms:.1f} ms); dropped without computing"
                    ),
                )
                continue
            live.append(request)
        return live

    def _execute(self, batch: list[PendingRequest]) -> None:
        started = time.perf_counter()
        try:
            shares = self._run_batch(self.runtime, batch)
        except Exception as exc:  # noqa: BLE001 - any runtime failure fails this batch, not the server
            logger.exception("inference failed", extra={"model": self.name, "requests": len(batch)})
            for request in batch:
                _resolve_soon(request, InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}"))
            return
        finished = time.perf_counter()
        if len(batch) == 1:
            self._note_small_run(batch[0], finished - started)
        rows = sum(r.rows for r in batch)
        inference_ms = (finished - started) * 1e3
        queue_s = [started - r.enqueued for r in batch]
        answers = [
            (request, BatchedResult(outputs, waited * 1e3, inference_ms, rows))
            for request, outputs, waited in zip(batch, shares, queue_s, strict=True)
        ]
        _resolve_all_soon(answers)
        self._observer.batch_done(rows, finished - started, queue_s)


def _resolve_soon(request: PendingRequest, outcome: BatchedResult | ServingError) -> None:
    # RuntimeError: the event loop is closed, so nobody is waiting for this answer any more
    with contextlib.suppress(RuntimeError):
        request.loop.call_soon_threadsafe(_resolve, request.future, outcome)


def _resolve_all_soon(answers: list[tuple[PendingRequest, BatchedResult]]) -> None:
    """One wake-up of each event loop per batch, not one per request (each writes its self-pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = collections.defaultdict(list)
    for request, outcome in answers:
        by_loop[request.loop].append((request.future, outcome))
    for loop, outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve_many, outcomes)


def _resolve_many(outcomes: list[tuple[asyncio.Future, BatchedResult]]) -> None:
    for future, outcome in outcomes:
        _resolve(future, outcome)


def _resolve(future: asyncio.Future, outcome: BatchedResult | ServingError) -> None:
    if future.done():
        return
    if isinstance(outcome, ServingError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
