"""DynamicBatcher: when batches close, mixed K, deadlines, back-pressure, failures, seeded determinism.

Nothing here waits a fixed time for something to happen: tests wait on the condition itself
(`eventually`), or hold the runtime on an event to make "the runtime is busy" a fact.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.batcher import DynamicBatcher
from server.errors import DeadlineExceeded, InferenceFailed, Unavailable
from server.noise import pad_candidates, request_noise
from server.runner import OnnxRunner
from server.settings import ServerSettings
from tests.server.live import eventually

OBS_DIM, ACTION_DIM = 6, 3


class RecordingRuntime:
    """A numpy stand-in policy (best of K by -|candidate|^2) that records the (B, K) of each call."""

    provider = "numpy"

    def __init__(self, fail: bool = False, hold: bool = False):
        self.calls: list[tuple[int, int]] = []
        self.threads: list[str] = []  # the thread each call ran on
        self.fail = fail
        self.lock = threading.Lock()
        self.running = threading.Event()  # set while a call is inside the runtime
        self.release = threading.Event()  # with hold=True, each call waits for this
        if not hold:
            self.release.set()

    def __call__(self, observation, noise):
        with self.lock:
            self.calls.append((observation.shape[0], noise.shape[1]))
            self.threads.append(threading.current_thread().name)
        self.running.set()
        self.release.wait(30)
        self.running.clear()
        if self.fail:
            raise RuntimeError("boom")
        candidates = np.tanh(observation[:, None, :ACTION_DIM] + noise)
        scores = -(candidates**2).sum(-1)
        best = scores.argmax(1)
        rows = np.arange(len(best))
        return {"action": candidates[rows, best], "q_value": scores[rows, best], "candidates": candidates}


def make_batcher(runtime, **options) -> DynamicBatcher:
    settings = {
        "max_batch_size": 64,
        "max_queue_delay_s": 0.0,
        "max_queue_size": 1024,
        "mixed_candidates": "pad",
    }
    settings.update(options)
    return DynamicBatcher(runtime, name="test/1", **settings)


def request(seed: int, rows: int = 1, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    observation = np.random.default_rng(seed + 1000).standard_normal((rows, OBS_DIM)).astype(np.float32)
    return observation, request_noise(seed, rows, k, ACTION_DIM)


async def inline_ready(batchers: list, runtime, **options) -> DynamicBatcher:
    """A batcher that may run small lone requests inline: one request measured on its thread, idle."""
    batcher = make_batcher(runtime, inline_below_s=60.0, **options)
    batchers.append(batcher)
    await batcher.submit(*request(0), None)  # measured on the thread: inline allowed from now on
    await eventually(lambda: batcher.idle)
    return batcher


class Observed:
    """A BatchObserver that keeps the batch sizes it was told about (what the histogram gets)."""

    def __init__(self):
        self.batch_rows: list[int] = []

    def batch_done(self, rows, inference_s, queue_s):
        self.batch_rows.append(rows)

    def queue_depth(self, rows):
        pass

    def unloaded(self):
        pass


@pytest.fixture
def batchers():
    made = []
    yield made
    for batcher in made:
        batcher.close()


async def test_batch_closes_as_soon_as_it_is_full(batchers):
    runtime = RecordingRuntime()
    batcher = make_batcher(runtime, max_batch_size=4, max_queue_delay_s=30.0)
    batchers.append(batcher)
    started = time.perf_counter()
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(*request(i), None) for i in range(4))), 10
    )
    assert time.perf_counter() - started < 5.0  # far below the 30 s delay
    assert runtime.calls == [(4, 1)]
    assert all(r.batch_rows == 4 for r in results)


async def test_a_lone_request_runs_at_once_and_requests_arriving_while_busy_form_the_next_batch(batchers):
    runtime, observed = RecordingRuntime(hold=True), Observed()
    batcher = make_batcher(runtime, max_batch_size=64, max_queue_delay_s=0.0, observer=observed)
    batchers.append(batcher)
    lone = asyncio.ensure_future(batcher.submit(*request(0), None))
    await eventually(runtime.running.is_set)  # it ran without waiting for company
    assert runtime.calls == [(1, 1)]
    waiting = [asyncio.ensure_future(batcher.submit(*request(i, rows=2), None)) for i in (1, 2, 3)]
    await eventually(lambda: batcher.pending == 4)  # 1 running + 3 queued behind it
    runtime.release.set()
    results = await asyncio.wait_for(asyncio.gather(lone, *waiting), 10)
    assert runtime.calls == [(1, 1), (6, 1)]  # the three that queued ran as one batch
    assert [r.batch_rows for r in results] == [1, 6, 6, 6]
    await eventually(lambda: len(observed.batch_rows) == 2)  # reported after the answers went out
    assert observed.batch_rows == [1, 6]  # the histogram sees exactly the batches that ran


async def test_queue_delay_is_an_optional_cap_that_waits_for_a_fuller_batch(batchers):
    runtime = RecordingRuntime()
    batcher = make_batcher(runtime, max_batch_size=64, max_queue_delay_s=0.2)
    batchers.append(batcher)
    started = time.perf_counter()
    first = asyncio.ensure_future(batcher.submit(*request(0), None))
    await eventually(lambda: batcher.pending == 1)
    second = await batcher.submit(*request(1, rows=2), None)
    elapsed = time.perf_counter() - started
    assert 0.19 <= elapsed < 5.0
    assert runtime.calls == [(3, 1)] and second.batch_rows == 3
    assert (await first).queue_ms >= 190


async def test_late_and_abandoned_requests_are_not_counted_in_the_batch_size(batchers):
    runtime, observed = RecordingRuntime(hold=True), Observed()
    batcher = make_batcher(runtime, max_queue_delay_s=0.0, observer=observed)
    batchers.append(batcher)
    busy = asyncio.ensure_future(batcher.submit(*request(0), None))
    await eventually(runtime.running.is_set)
    late = asyncio.ensure_future(batcher.submit(*request(1), time.perf_counter() - 0.001))
    abandoned = asyncio.ensure_future(batcher.submit(*request(2), None))
    kept = asyncio.ensure_future(batcher.submit(*request(3, rows=2), None))
    await eventually(lambda: batcher.pending == 4)
    abandoned.cancel()
    runtime.release.set()
    await asyncio.wait_for(asyncio.gather(busy, kept), 10)
    with pytest.raises(DeadlineExceeded):
        await late
    await eventually(lambda: len(observed.batch_rows) == 2)
    assert runtime.calls == [(1, 1), (2, 1)] and observed.batch_rows == [1, 2]


async def test_requests_are_never_split_and_batches_respect_the_size_limit(batchers):
    runtime = RecordingRuntime()
    batcher = make_batcher(runtime, max_batch_size=4, max_queue_delay_s=0.05)
    batchers.append(batcher)
    await asyncio.gather(*(batcher.submit(*request(i, rows=3), None) for i in range(3)))
    assert sorted(runtime.calls) == [(3, 1), (3, 1), (3, 1)]


@pytest.mark.parametrize(("strategy", "runs"), [("pad", 1), ("group", 2)])
async def test_mixed_k_in_one_batch_gives_each_request_its_own_answer(batchers, strategy, runs):
    runtime = RecordingRuntime()
    batcher = make_batcher(runtime, max_batch_size=3, max_queue_delay_s=30.0, mixed_candidates=strategy)
    batchers.append(batcher)
    requests = [request(0, k=1), request(1, rows=1, k=4), request(2, k=1)]
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(o, n, None) for o, n in requests)), 10)
    assert len(runtime.calls) == runs
    for (observation, noise), result in zip(requests, results, strict=True):
        alone = runtime(observation, noise)
        np.testing.assert_array_equal(result.outputs["action"], alone["action"])
        np.testing.assert_array_equal(result.outputs["q_value"], alone["q_value"])
        assert result.outputs["candidates"].shape == noise.shape


def test_padding_with_own_candidates_keeps_the_choice():
    noise = request_noise(5, 4, 3, ACTION_DIM)
    padded = pad_candidates(noise, 8)
    assert padded.shape == (4, 8, ACTION_DIM)
    np.testing.assert_array_equal(padded[:, :3], noise)
    np.testing.assert_array_equal(padded[:, 3], noise[:, 0])


async def test_seeded_request_is_bit_identical_alone_and_inside_a_concurrent_mixed_batch(
    bundle_dir, batchers
):
    settings = ServerSettings(model_repository=bundle_dir.parent.parent)
    runtime = OnnxRunner(bundle_dir / "policy.onnx", settings, 28, 5)
    observation = np.random.default_rng(3).standard_normal((1, 28)).astype(np.float32)
    noise = request_noise(1234, 1, 4, 5)
    for strategy in ("pad", "group"):
        batcher = make_batcher(runtime, max_batch_size=64, max_queue_delay_s=0.3, mixed_candidates=strategy)
        batchers.append(batcher)
        alone = await batcher.submit(observation, noise, None)
        others = [
            batcher.submit(np.random.default_rng(s).standard_normal((s, 28)).astype(np.float32),
                           request_noise(s, s, k, 5), None)
            for s, k in ((1, 1), (2, 8), (3, 2), (5, 4))
        ]  # fmt: skip
        crowded, *_ = await asyncio.gather(batcher.submit(observation, noise, None), *others)
        assert alone.batch_rows == 1 and crowded.batch_rows == 12
        assert crowded.outputs["action"].tobytes() == alone.outputs["action"].tobytes()
        assert crowded.outputs["q_value"].tobytes() == alone.outputs["q_value"].tobytes()


async def test_request_past_its_deadline_is_dropped_before_inference(batchers):
    runtime = RecordingRuntime()
    batcher = make_batcher(runtime, max_queue_delay_s=0.2)
    batchers.append(batcher)
    late = batcher.submit(*request(0), time.perf_counter() + 0.01)
    on_time = batcher.submit(*request(1, rows=2), None)
    results = await asyncio.gather(late, on_time, return_exceptions=True)
    assert isinstance(results[0], DeadlineExceeded) and "dropped" in results[0].message
    assert runtime.calls == [(2, 1)]


async def test_full_queue_refuses_with_retry_after(batchers):
    runtime = RecordingRuntime()
    batcher = make_batcher(runtime, max_queue_delay_s=30.0, max_batch_size=64, max_queue_size=3)
    batchers.append(batcher)
    waiting = asyncio.ensure_future(batcher.submit(*request(0, rows=3), None))
    await eventually(lambda: batcher.pending == 1)
    with pytest.raises(Unavailable, match="queue .* is full") as refused:
        await batcher.submit(*request(1), None)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    batcher.close()
    with pytest.raises(Unavailable, match="unloaded"):
        await waiting


async def test_runtime_failure_fails_its_batch_only(batchers):
    runtime = RecordingRuntime(fail=True)
    batcher = make_batcher(runtime)
    batchers.append(batcher)
    with pytest.raises(InferenceFailed, match="boom"):
        await batcher.submit(*request(0), None)
    runtime.fail = False
    assert (await batcher.submit(*request(1), None)).outputs["action"].shape == (1, ACTION_DIM)


async def test_inference_runs_off_the_event_loop(batchers):
    runtime = RecordingRuntime(hold=True)
    batcher = make_batcher(runtime)
    batchers.append(batcher)
    submitted = asyncio.ensure_future(batcher.submit(*request(0), None))
    await eventually(runtime.running.is_set)
    # the runtime is inside its call; the loop still runs other work to completion meanwhile
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "loop alive"), 10) == "loop alive"
    assert not submitted.done()
    runtime.release.set()
    await asyncio.wait_for(submitted, 10)
    await eventually(lambda: batcher.pending == 0)


async def test_a_small_lone_request_runs_inline_once_such_requests_are_measured_fast(batchers):
    runtime, observed = RecordingRuntime(), Observed()
    threaded = make_batcher(runtime, observer=observed, inline_below_s=0.0)
    inline = make_batcher(runtime, observer=observed, inline_below_s=60.0)
    batchers.extend([threaded, inline])
    answers = {}
    for name, batcher in (("threaded", threaded), ("inline", inline)):
        for seed in (1, 2):  # the first is measured on the thread, the second may run inline
            await eventually(lambda b=batcher: b.idle)
            answers[name, seed] = await batcher.submit(*request(seed, k=4), None)
    caller = threading.current_thread().name
    assert runtime.threads == ["infer-test/1"] * 3 + [caller]
    for seed in (1, 2):  # where it ran changes nothing in the answer
        for key, value in answers["threaded", seed].outputs.items():
            np.testing.assert_array_equal(answers["inline", seed].outputs[key], value)
    assert answers["inline", 2].batch_rows == 1 and answers["inline", 2].inference_ms > 0
    assert observed.batch_rows == [1, 1, 1, 1]


async def test_inline_stays_off_for_slow_models_large_requests_and_busy_runtimes(batchers):
    runtime = RecordingRuntime()
    slow = make_batcher(runtime, inline_below_s=1e-12)  # no request is that fast
    fast = make_batcher(runtime, inline_below_s=60.0)
    batchers.extend([slow, fast])
    for batcher in (slow, fast):
        await eventually(lambda b=batcher: b.idle)
        await batcher.submit(*request(0), None)  # measured
    await eventually(lambda: slow.idle)
    await slow.submit(*request(1), None)
    await eventually(lambda: fast.idle)
    await fast.submit(*request(2, rows=4, k=9), None)  # 36 candidate rows: too large to run inline
    assert set(runtime.threads) == {"infer-test/1"}


async def test_requests_arriving_together_batch_on_the_thread_even_when_each_could_run_inline(batchers):
    # A loop under load has several requests read at once: the first claims the idle runtime,
    # yields once, finds the others queued behind its claim and joins them, so they run as
    # one batch on the thread instead of one by one on the loop.
    runtime, observed = RecordingRuntime(), Observed()
    batcher = await inline_ready(batchers, runtime, observer=observed, max_batch_size=64)
    alone = await batcher.submit(*request(1), None)  # nobody else: inline
    assert runtime.threads[-1] == threading.current_thread().name
    await eventually(lambda: batcher.idle)
    together = await asyncio.gather(*(batcher.submit(*request(seed), None) for seed in range(1, 9)))
    # the thread tells the observer after it has answered: wait for the last batch's report
    await eventually(lambda: sum(observed.batch_rows) == 10)
    assert runtime.threads[2:] and set(runtime.threads[2:]) == {"infer-test/1"}
    assert observed.batch_rows[:2] == [1, 1] and max(observed.batch_rows[2:]) > 1
    assert sum(observed.batch_rows[2:]) == 8 and batcher.pending == 0
    for key, value in alone.outputs.items():  # where and with whom it ran changes nothing
        np.testing.assert_array_equal(together[0].outputs[key], value)


async def test_a_request_cancelled_while_it_holds_the_inline_claim_gives_the_runtime_back(batchers):
    runtime = RecordingRuntime()
    batcher = await inline_ready(batchers, runtime)
    claimant = asyncio.ensure_future(batcher.submit(*request(1), None))
    await asyncio.sleep(0)  # the claimant claims the runtime and yields
    assert batcher.pending == 1
    claimant.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claimant
    assert batcher.pending == 0 and len(runtime.calls) == 1  # nothing ran for it
    await eventually(lambda: batcher.idle)
    assert (await batcher.submit(*request(2), None)).batch_rows == 1  # and the batcher serves on


async def test_inline_stays_off_when_a_queue_delay_asks_requests_to_wait_for_company(batchers):
    runtime = RecordingRuntime()
    batcher = make_batcher(runtime, inline_below_s=60.0, max_queue_delay_s=0.001)
    batchers.append(batcher)
    for seed in range(3):
        await eventually(lambda: batcher.idle)
        await batcher.submit(*request(seed), None)
    assert runtime.threads == ["infer-test/1"] * 3


async def test_an_inline_request_keeps_deadlines_and_failures_to_itself(batchers):
    runtime = RecordingRuntime()
    batcher = await inline_ready(batchers, runtime)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(*request(1), time.perf_counter() - 1.0)
    runtime.fail = True
    await eventually(lambda: batcher.idle)
    with pytest.raises(InferenceFailed, match="boom"):
        await batcher.submit(*request(2), None)
    runtime.fail = False
    await eventually(lambda: batcher.idle)
    result = await batcher.submit(*request(3), None)  # the batcher serves on
    assert result.outputs["action"].shape == (1, ACTION_DIM) and batcher.pending == 0
    assert runtime.threads[-1] == threading.current_thread().name


def test_padding_repeats_whole_chunks_of_a_rows_own_noise():
    noise = request_noise(5, 2, 3, (4, ACTION_DIM))  # chunks of H = 4
    padded = pad_candidates(noise, 7)
    assert padded.shape == (2, 7, 4, ACTION_DIM)
    np.testing.assert_array_equal(padded[:, :3], noise)
    np.testing.assert_array_equal(padded[:, 6], noise[:, 0])


@pytest.mark.parametrize("strategy", ["pad", "group"])
async def test_a_seeded_chunk_is_bit_identical_alone_and_inside_a_concurrent_mixed_batch(
    chunked_repository, batchers, strategy
):
    bundle_dir = chunked_repository / "chunks" / "1"
    settings = ServerSettings(model_repository=chunked_repository)
    runtime = OnnxRunner(bundle_dir / "policy.onnx", settings, 28, 5, action_horizon=5)
    observation = np.random.default_rng(3).standard_normal((1, 28)).astype(np.float32)
    noise = request_noise(1234, 1, 4, (5, 5))
    batcher = make_batcher(runtime, max_batch_size=64, max_queue_delay_s=0.3, mixed_candidates=strategy)
    batchers.append(batcher)
    alone = await batcher.submit(observation, noise, None)
    others = [
        batcher.submit(np.random.default_rng(s).standard_normal((s, 28)).astype(np.float32),
                       request_noise(s, s, k, (5, 5)), None)
        for s, k in ((1, 1), (2, 8), (3, 2))
    ]  # fmt: skip
    crowded, *rest = await asyncio.gather(batcher.submit(observation, noise, None), *others)
    assert alone.outputs["action"].shape == (1, 5, 5) and crowded.batch_rows == 7
    assert crowded.outputs["action"].tobytes() == alone.outputs["action"].tobytes()
    assert crowded.outputs["q_value"].tobytes() == alone.outputs["q_value"].tobytes()
    assert [r.outputs["candidates"].shape for r in rest] == [(1, 1, 5, 5), (2, 8, 5, 5), (3, 2, 5, 5)]
