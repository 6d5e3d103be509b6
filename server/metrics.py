"""Prometheus metrics (`GET /metrics`), in a registry owned by one app, never the global one.

Names follow Prometheus conventions: `mfql_requests_total{model,protocol,status}`,
`mfql_request_duration_seconds`, `mfql_queue_duration_seconds`, `mfql_inference_duration_seconds`,
`mfql_batch_size`, `mfql_queue_depth`, `mfql_num_candidates`, `mfql_num_candidates_reduced_total`,
`mfql_chosen_q_value`, `mfql_actions_per_observation` (the chunk length H of each answer),
`mfql_model_versions_loaded`, `mfql_model_versions_failed`; sessions: `mfql_sessions_active`,
`mfql_sessions_ended_total{reason}` (ended, expired, disconnected), `mfql_session_resets_total`,
`mfql_sessions_refused_total`; `mfql_actions_clamped_total{model,limit}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.exposition import generate_latest

from server.batcher import BatchObserver
from server.errors import ServingError
from server.served_model import ActResult
from server.sessions import SessionEvents

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CANDIDATE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CHUNK_BUCKETS = (1, 2, 4, 5, 8, 10, 16, 25, 32, 50, 64)  # openpi's and Q-chunking's usual H among them


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mfql_requests",
            "Requests by model, protocol and status code",
            ["model", "protocol", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "mfql_request_duration_seconds", "Time from request parsed to answer ready", ["model", "protocol"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "mfql_queue_duration_seconds", "Time a request waited for its batch to start", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_duration = Histogram(
            "mfql_inference_duration_seconds", "Runtime time per batch", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "mfql_batch_size", "Observations per batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "mfql_queue_depth", "Observations waiting for a batch", ["model", "version"], registry=r
        )
        self.num_candidates = Histogram(
            "mfql_num_candidates", "K used per request", ["model"], buckets=CANDIDATE_BUCKETS, registry=r
        )
        self.candidates_reduced = Counter(
            "mfql_num_candidates_reduced",
            "Requests whose K the latency target lowered below the model's default",
            ["model"],
            registry=r,
        )
        # per model, not per version: a hot reload from H = 1 to a chunked version shows as both
        self.chunk_length = Histogram(
            "mfql_actions_per_observation", "Chunk length H of each answer: actions per observation (1: one action)",
            ["model"], buckets=CHUNK_BUCKETS, registry=r,
        )  # fmt: skip
        self.chosen_q = Summary(
            "mfql_chosen_q_value", "Critic value of the chosen actions", ["model"], registry=r
        )
        self.sessions_active = Gauge("mfql_sessions_active", "Sessions open (all protocols)", registry=r)
        self.sessions_ended = Counter(
            "mfql_sessions_ended",
            "Sessions ended, by reason (ended, expired, disconnected)",
            ["reason"],
            registry=r,
        )
        self.session_resets = Counter(
            "mfql_session_resets", "New episodes started in open sessions", registry=r
        )
        self.sessions_refused = Counter(
            "mfql_sessions_refused", "Sessions refused because --max-sessions were open", registry=r
        )
        self.actions_clamped = Counter(
            "mfql_actions_clamped",
            "Answered action steps an action limit changed, by limit (rate: max change per step, bound)",
            ["model", "limit"],
            registry=r,
        )
        self._children: dict[tuple, object] = {}
        self.loaded = Gauge("mfql_model_versions_loaded", "Model versions serving", registry=r)
        self.failed = Gauge(
            "mfql_model_versions_failed", "Model versions that failed verification", registry=r
        )

    def observer(self, model: str, version: int) -> BatchObserver:
        return _PrometheusObserver(self, model, str(version))

    def set_model_counts(self, loaded: int, failed: int) -> None:
        self.loaded.set(loaded)
        self.failed.set(failed)

    def record_result(self, result: ActResult) -> None:
        self._child(self.num_candidates, result.model).observe(result.num_candidates)
        self._child(self.chunk_length, result.model).observe(result.action_horizon)
        if result.candidates_reduced:
            self._child(self.candidates_reduced, result.model).inc()
        summary = self._child(self.chosen_q, result.model)
        for q in result.q_values.tolist():
            summary.observe(q)

    def session_events(self) -> SessionEvents:
        return _PrometheusSessionEvents(self)

    def record_clamps(self, model: str, counts: dict[str, int]) -> None:
        for limit, count in counts.items():
            if count:
                self._child(self.actions_clamped, model, limit).inc(count)

    def track(self, protocol: str) -> Tracking:
        """`with metrics.track("rest") as tracked:` counts the request under its model and status
        (ServingError's, 499 when the client left, else 500) and times it.

        The model label starts as "unknown" and is set once the request resolved a model, so
        requests for made-up model names cannot grow the label set.
        """
        return Tracking(self, protocol)

    def _child(self, metric, *labels: str):
        """`metric.labels(*labels)`, looked up once per label set (labels() costs a lock and a tuple)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Tracking:
    """One request being counted and timed (a plain class: @contextmanager cost ~3x more per request)."""

    __slots__ = ("metrics", "protocol", "model", "started")

    def __init__(self, metrics: ServerMetrics, protocol: str):
        self.metrics, self.protocol, self.model = metrics, protocol, "unknown"
        self.started = time.perf_counter()

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            status = "200"
        elif issubclass(kind, ServingError):
            status = str(error.status)
        elif issubclass(kind, asyncio.CancelledError):
            status = "499"  # the client went away first (nginx's code for it)
        else:
            status = "500"
        metrics = self.metrics
        metrics._child(metrics.requests, self.model, self.protocol, status).inc()
        duration = time.perf_counter() - self.started
        metrics._child(metrics.request_duration, self.model, self.protocol).observe(duration)


class _PrometheusObserver(BatchObserver):
    def __init__(self, metrics: ServerMetrics, model: str, version: str):
        self._batch_size = metrics.batch_size.labels(model)
        self._inference = metrics.inference_duration.labels(model)
        self._queue = metrics.queue_duration.labels(model)
        self._depth = metrics.queue_depth.labels(model, version)
        self._labels = (metrics.queue_depth, model, version)

    def batch_done(self, rows: int, inference_s: float, queue_s: list[float]) -> None:
        self._batch_size.observe(rows)
        self._inference.observe(inference_s)
        for waited in queue_s:
            self._queue.observe(waited)

    def queue_depth(self, rows: int) -> None:
        self._depth.set(rows)

    def unloaded(self) -> None:
        gauge, model, version = self._labels
        with contextlib.suppress(KeyError):  # already removed (a stop before the close)
            gauge.remove(model, version)


class _PrometheusSessionEvents(SessionEvents):
    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def opened(self, active: int) -> None:
        self.metrics.sessions_active.set(active)

    def closed(self, active: int, reason: str) -> None:
        self.metrics.sessions_active.set(active)
        self.metrics._child(self.metrics.sessions_ended, reason).inc()

    def reset(self) -> None:
        self.metrics.session_resets.inc()

    def refused(self) -> None:
        self.metrics.sessions_refused.inc()
