"""One loaded model version: its verified bundle, runtime and batcher, and the act call every protocol uses.

REST, v2 and the WebSocket only translate their wire format into `check_request(...)` and
`act(...)` here, so validation, seeding, deadlines and timings are the same on all three.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.action_limits import ActionLimits, model_limits
from server.batcher import BatchObserver, DynamicBatcher
from server.bundle_loader import Bundle, read_bundle, run_selftest
from server.errors import BundleError, InvalidInput
from server.latency_target import CandidateBudget
from server.noise import SEED_LIMIT, fresh_seed, request_noise
from server.runner import PolicyRuntime, load_runtime
from server.settings import ServerSettings

logger = logging.getLogger("mfql.model")
# A value beyond float32's range becomes inf and is refused with a 422 naming it; numpy's
# warning about the cast would only repeat that in the log (np.errstate per request cost 25 us).
warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning)
LATENCY_SMOOTHING = 0.1  # weight of the newest answer in ModelVersion.mean_total_ms


@dataclass(frozen=True)
class ActRequest:
    """A validated request: observations [B, obs_dim] float32 and the options that shape the answer."""

    observations: np.ndarray
    single: bool  # the client sent one observation [obs_dim]: answer with one action (or chunk)
    num_candidates: int
    seed: int  # the one given, else a fresh one, so the answer can say which
    deadline: float | None  # time.perf_counter() value
    candidates_named: bool = True  # False: K is the model's default, which a latency target may lower


@dataclass(frozen=True)
class ActResult:
    model: str
    version: int
    actions: np.ndarray  # [B, action_dim], or [B, H, action_dim] from a chunked model
    q_values: np.ndarray  # [B]: the critic's value of each answered action (or whole chunk)
    candidates: np.ndarray  # [B, K, action_dim] ([B, K, H, action_dim] when chunked)
    num_candidates: int  # the K used
    seed: int
    timing_ms: dict[str, float]
    candidates_reduced: bool = False  # the latency target lowered K below the model's default
    candidate_q_values: np.ndarray | None = None  # [B, K]: the critic's value of every candidate (act_scored)

    @property
    def action_horizon(self) -> int:
        """Actions answered per observation: 1, or the chunk length H."""
        return 1 if self.actions.ndim == 2 else int(self.actions.shape[1])


def warmup_shapes(max_batch_size: int, default_k: int, max_k: int) -> list[tuple[int, int]]:
    """(B, K) of every batch-size bucket (powers of two up to max_batch_size) at K in {1, default, max}.

    The first run at a new shape can be slow (allocation plans on CPU, kernels and engines on
    GPU); paying it before the version reports ready keeps it off the first clients' requests.
    """
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch_size)
    return [(b, k) for b in sizes for k in sorted({1, default_k, max_k})]


@dataclass
class ModelVersion:
    name: str
    version: int
    bundle: Bundle
    runtime: PolicyRuntime
    batcher: DynamicBatcher
    selftest: str  # the verification summary line
    default_deadline_ms: float | None = None
    budget: CandidateBudget | None = None  # with --latency-target-ms
    limits: ActionLimits = ActionLimits()  # the bundle's bounds (where they bind) and max_action_delta
    mean_total_ms: float = 0.0  # running mean of answers' total time: the hand-over's delay estimate

    @property
    def obs_dim(self) -> int:
        return self.bundle.metadata.obs_dim

    @property
    def action_dim(self) -> int:
        return self.bundle.metadata.action_dim

    @property
    def max_num_candidates(self) -> int:
        return self.bundle.metadata.max_num_candidates

    @property
    def action_horizon(self) -> int:
        return self.bundle.metadata.action_horizon

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """One observation's answer: (action_dim,), or (H, action_dim) for a chunked model."""
        return self.bundle.metadata.chunk_shape

    def describe(self) -> dict[str, Any]:
        """What a robot needs to know about this version (GET /v1/models/{name}, WebSocket on connect)."""
        meta = self.bundle.metadata
        return {
            "name": self.name,
            "version": str(self.version),
            "obs_dim": meta.obs_dim,
            "action_dim": meta.action_dim,
            "action_horizon": meta.action_horizon,
            "control_period_s": meta.control_period_s,
            "action_low": meta.action_low,
            "action_high": meta.action_high,
            "max_action_delta": meta.max_action_delta,
            "default_num_candidates": meta.default_num_candidates,
            "max_num_candidates": meta.max_num_candidates,
            "provider": self.runtime.provider,
            "env_name": meta.env_name,
            "success_rate": meta.success_rate,
            "training_step": meta.training_step,
            "policy_type": meta.policy_type,
            "precision": meta.precision,
            "dataset": (meta.model_extra or {}).get("dataset"),
            "exported_at": (meta.model_extra or {}).get("exported_at"),
            "bundle_name": meta.name,
            "bundle_sha256": self.bundle.sha256,
            "selftest": self.selftest,
        }

    def check_request(
        self,
        observations: Any,
        *,
        field_name: str = "observation",
        num_candidates: Any = None,
        seed: Any = None,
        deadline_ms: Any = None,
        received: float | None = None,
    ) -> ActRequest:
        """Validate wire values into an ActRequest; InvalidInput names the field, expected and received."""
        batch, single = self.check_observations(observations, field_name)
        return ActRequest(
            observations=batch,
            single=single,
            num_candidates=self.check_num_candidates(num_candidates),
            seed=fresh_seed() if seed is None else check_seed(seed),
            deadline=self.deadline(deadline_ms, received),
            candidates_named=num_candidates is not None,
        )

    def check_observations(self, value: Any, field_name: str) -> tuple[np.ndarray, bool]:
        expected = f"[{self.obs_dim}] or [B, {self.obs_dim}] (obs_dim={self.obs_dim})"
        try:
            batch = np.asarray(value, dtype=np.float32)  # beyond float32's range: inf, refused below
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{field_name}: expected numbers of shape {expected} ({exc})") from exc
        if batch.ndim not in (1, 2) or batch.shape[-1] != self.obs_dim or batch.size == 0:
            raise InvalidInput(f"{field_name}: expected shape {expected}, got {list(batch.shape)}")
        if not np.isfinite(batch).all():
            first = np.argwhere(~np.isfinite(batch))[0].tolist()
            raise InvalidInput(f"{field_name}: contains NaN or inf (first at index {first})")
        single = batch.ndim == 1
        return (batch.reshape(1, -1) if single else batch), single

    def check_num_candidates(self, value: Any) -> int:
        if value is None:
            return self.bundle.metadata.default_num_candidates
        k = _as_int(value, "num_candidates")
        if not 1 <= k <= self.max_num_candidates:
            raise InvalidInput(
                f"num_candidates: must be in [1, {self.max_num_candidates}] for model {self.name!r} "
                f"version {self.version}, got {k}"
            )
        return k

    def deadline(self, deadline_ms: Any, received: float | None) -> float | None:
        if deadline_ms is None:
            deadline_ms = self.default_deadline_ms
        if deadline_ms is None:
            return None
        try:
            budget = float(deadline_ms)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"deadline_ms: expected a number of milliseconds, got {deadline_ms!r}"
            ) from exc
        if not budget > 0 or not np.isfinite(budget):
            raise InvalidInput(f"deadline_ms: must be a positive number of milliseconds, got {deadline_ms!r}")
        return (received if received is not None else time.perf_counter()) + budget / 1e3

    async def act(self, request: ActRequest, received: float) -> ActResult:
        """Draw the request's noise from its seed, run it in a batch, and time it.

        For a chunked model each row's noise is [K, H, action_dim]: the seed fixes whole chunks,
        and K, the deadline and the latency target apply to the request as for one action.
        """
        k = request.num_candidates
        if self.budget is not None and not request.candidates_named:
            k = self.budget.candidates()
        noise = request_noise(request.seed, request.observations.shape[0], k, self.chunk_shape)
        result = await self.batcher.submit(request.observations, noise, request.deadline)
        if self.budget is not None:
            self.budget.observe(result.queue_ms, result.inference_ms, k)
        outputs = result.outputs
        total_ms = self._observe_total(received)
        return ActResult(
            model=self.name,
            version=self.version,
            actions=outputs["action"],
            q_values=outputs["q_value"],
            candidates=outputs["candidates"],
            num_candidates=k,
            candidates_reduced=k < request.num_candidates,
            seed=request.seed,
            timing_ms={
                "queue": round(result.queue_ms, 3),
                "inference": round(result.inference_ms, 3),
                "total": round(total_ms, 3),
            },
        )

    def _observe_total(self, received: float) -> float:
        total_ms = (time.perf_counter() - received) * 1e3
        previous = self.mean_total_ms
        self.mean_total_ms = (
            total_ms if previous == 0 else previous + LATENCY_SMOOTHING * (total_ms - previous)
        )
        return total_ms

    async def act_scored(self, request: ActRequest, received: float) -> ActResult:
        """As `act`, with the critic's value of every candidate (`candidate_q_values` [B, K]).

        The graph returns all K candidates but only the best one's Q. Each candidate is a function
        of its observation and its own noise, and the critic scores each row on its own
        (best_of_k in training/agents/common.py), so running the B x K (observation, noise) pairs
        as B x K rows of K = 1 gives every candidate and its Q from the same bundle, with no new
        graph output; the actor and critic rows computed are the same B x K.
        """
        rows, k = request.observations.shape[0], request.num_candidates
        expanded = dataclasses.replace(
            request,
            observations=np.repeat(request.observations, k, axis=0),
            num_candidates=1,
            candidates_named=True,
        )
        noise = request_noise(request.seed, rows, k, self.chunk_shape).reshape(rows * k, 1, *self.chunk_shape)
        result = await self.batcher.submit(expanded.observations, noise, request.deadline)
        candidates = result.outputs["candidates"].reshape(rows, k, *self.chunk_shape)
        q_values = result.outputs["q_value"].reshape(rows, k)
        best = q_values.argmax(axis=1)  # first maximum, as the graph's argmax
        total_ms = self._observe_total(received)
        return ActResult(
            model=self.name,
            version=self.version,
            actions=candidates[np.arange(rows), best],
            q_values=q_values[np.arange(rows), best],
            candidates=candidates,
            candidate_q_values=q_values,
            num_candidates=k,
            seed=request.seed,
            timing_ms={
                "queue": round(result.queue_ms, 3),
                "inference": round(result.inference_ms, 3),
                "total": round(total_ms, 3),
            },
        )


def check_seed(value: Any) -> int:
    seed = _as_int(value, "seed")
    if not 0 <= seed < SEED_LIMIT:
        raise InvalidInput(f"seed: must be an integer in [0, 2**64), got {seed}")
    return seed


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInput(f"{name}: expected an integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iu":
        return int(value.reshape(-1)[0])
    raise InvalidInput(f"{name}: expected an integer, got {value!r}")


def check_output_shapes(path, outputs: dict, rows: int, k: int, meta) -> None:
    expected = {
        "action": (rows, *meta.chunk_shape),
        "q_value": (rows,),
        "candidates": (rows, k, *meta.chunk_shape),
    }
    for name, shape in expected.items():
        if outputs[name].shape != shape or outputs[name].dtype != np.float32:
            raise BundleError(
                f"{path}: warm-up at B={rows}, K={k} gave {name} {outputs[name].dtype} "
                f"{list(outputs[name].shape)}, expected float32 {list(shape)}"
            )


def load_model_version(
    name: str, version: int, path, settings: ServerSettings, observer: BatchObserver | None = None
) -> ModelVersion:
    """Verify the bundle, load its runtime, pass the self-test, warm up every batch bucket, start batching.

    Blocking (seconds for a large model): the repository runs it in a worker thread.
    """
    bundle = read_bundle(path)
    runtime = load_runtime(bundle, settings)
    meta = bundle.metadata
    try:
        summary = run_selftest(bundle, runtime)
        rng = np.random.default_rng(0)
        for rows, k in warmup_shapes(
            settings.max_batch_size, meta.default_num_candidates, meta.max_num_candidates
        ):
            observation = rng.standard_normal((rows, meta.obs_dim)).astype(np.float32)
            outputs = runtime(observation, request_noise(0, rows, k, meta.chunk_shape))
            check_output_shapes(path, outputs, rows, k, meta)
        budget = None
        if settings.latency_target_ms is not None:
            budget = CandidateBudget(
                settings.latency_target_ms, meta.default_num_candidates, warm_inference_ms(runtime, meta)
            )
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raises, the bundle cannot serve
        raise BundleError(f"{path}: running the graph failed: {type(exc).__name__}: {exc}") from exc
    batcher = DynamicBatcher(
        runtime,
        name=f"{name}/{version}",
        max_batch_size=settings.max_batch_size,
        max_queue_delay_s=settings.max_queue_delay_s,
        max_queue_size=settings.max_queue_size,
        inline_below_s=settings.inline_below_s,
        mixed_candidates=settings.mixed_candidates,
        observer=observer,
    )
    logger.info(
        "model version loaded",
        extra={"model": name, "version": version, "provider": runtime.provider, "selftest": summary},
    )
    limits = model_limits(meta.action_low, meta.action_high, meta.max_action_delta)
    return ModelVersion(
        name, version, bundle, runtime, batcher, summary, settings.default_deadline_ms, budget, limits
    )


def warm_inference_ms(runtime: PolicyRuntime, meta) -> float:
    """One observation at the default K, timed after warm-up: the latency target's first estimate."""
    observation = np.zeros((1, meta.obs_dim), np.float32)
    noise = request_noise(0, 1, meta.default_num_candidates, meta.chunk_shape)
    started = time.perf_counter()
    runtime(observation, noise)
    return (time.perf_counter() - started) * 1e3
