"""Native REST (JSON): act, model listing and metadata, repository reload.

The act routes take the raw request: the body is validated by pydantic-core in one pass
(`parse_act_body`), the app-wide objects are read from app.state, and the answer is encoded
once by orjson; `RawRequestRoute` calls them without FastAPI's per-request parameter
resolution. The body's schema is still the OpenAPI contract (`openapi_extra`).
"""

from __future__ import annotations

import time

import numpy as np
import orjson
from fastapi import APIRouter, Path, Query, Request, Response

from server.control import CONTROL_KEYS, Control
from server.deps import control_of, metrics_of, repository_of, sessions_of
from server.errors import InvalidInput
from server.repository import ModelRepository
from server.routes.raw import RawRoutes
from server.schemas import (
    VERSION_LIMIT,
    ActBody,
    ActResponse,
    ModelDescription,
    ModelListing,
    ReloadReport,
    error_responses,
    parse_act_body,
)
from server.served_model import ActResult
from server.sessions import Session

router = APIRouter(prefix="/v1", tags=["native REST"])
hot_routes = RawRoutes(prefix="/v1", tags=["native REST"])  # act: installed on the app, first

ACT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ActBody.model_json_schema()}},
    }
}
ACT_ERRORS = error_responses(400, 401, 404, 413, 422, 500, 503, 504)
METADATA_ERRORS = error_responses(401, 404, 422, 503)
VersionPath = Path(ge=1, lt=VERSION_LIMIT, description="a positive integer")


def rest_answer(result: ActResult, single: bool, extra: dict | None = None) -> bytes:
    """`action` [d] (or the chunk [H, d]) for one observation, `actions` [B, d] ([B, H, d]) for a batch."""
    # Python floats (doubles) hold each float32 value exactly, and the decimal orjson writes for
    # a double reads back to exactly the float32 served. One row: `tolist` (numpy's cast cost
    # 10 us per answer at 32 clients in a profile, 1.5 us alone); a batch: one float64 cast.
    if single:
        answer: dict = {"action": result.actions[0].tolist(), "q_value": float(result.q_values[0])}
    else:
        answer = {
            "actions": result.actions.astype(np.float64),
            "q_values": result.q_values.astype(np.float64),
        }
    answer.update(
        action_horizon=result.action_horizon,
        num_candidates=result.num_candidates,
        model=result.model,
        version=str(result.version),
        seed=result.seed,
        timing_ms=result.timing_ms,
    )
    if extra:
        answer.update(extra)
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


async def act_on(name: str | None, request: Request) -> Response:
    received = time.perf_counter()
    metrics = metrics_of(request)
    with metrics.track("rest") as tracked:
        body = parse_act_body(await request.body())
        model = repository_of(request).resolve(name, body.version)
        tracked.model = model.name
        single = body.observation is not None
        act = model.check_request(
            body.observation if single else body.observations,
            field_name="observation" if single else "observations",
            num_candidates=body.num_candidates,
            seed=body.seed,
            deadline_ms=body.deadline_ms,
            received=received,
        )
        control = rest_control(body)
        if control is None and body.session_id is None and not model.limits.active:
            result = await model.act(act, received)  # stateless: today's hot path
            extra = None
        else:
            session = rest_session(request, body, control)
            result, extra = await control_of(request).act(
                model, act, control, session, seed_given=body.seed is not None, received=received
            )
        metrics.record_result(result)
        return Response(rest_answer(result, single, extra), media_type="application/json")


def rest_control(body: ActBody) -> Control | None:
    values = {key: getattr(body, key) for key in CONTROL_KEYS}
    if not any(value is not None for value in values.values()):
        return None
    return Control(**{key: value for key, value in values.items() if value is not None})


def rest_session(request: Request, body: ActBody, control: Control | None) -> Session | None:
    """The body's session (created on first use); `reset` or first use keeps the request's options."""
    if body.session_id is None:
        if body.reset:
            raise InvalidInput("reset: needs a session_id (the session whose episode to restart)")
        return None
    store = sessions_of(request)
    session, created = store.get_or_open(f"rest:{body.session_id}")
    if created or body.reset:
        options = control.options if control is not None else {}
        if body.reset:
            store.reset(session, options)
        else:
            session.options = session.options.updated(options)
    return session


@hot_routes.post(
    "/models/{name}/act", response_model=ActResponse, responses=ACT_ERRORS, openapi_extra=ACT_BODY
)
async def act(name: str, request: Request) -> Response:
    """Actions for one observation or a batch, from model `name` (newest ready version unless `version`).

    A chunked model (`action_horizon` H > 1) answers each observation with H actions, for the
    next H control steps: `action` is [H, action_dim] and `actions` [B, H, action_dim]."""
    return await act_on(name, request)


@hot_routes.post("/act", response_model=ActResponse, responses=ACT_ERRORS, openapi_extra=ACT_BODY)
async def act_default(request: Request) -> Response:
    """Like `/v1/models/{name}/act` for the default model: `MFQL_DEFAULT_MODEL`, else the only model,
    else the first ready model by name (`GET /v1/models` says which)."""
    return await act_on(None, request)


@router.get("/models", response_model=ModelListing, responses=error_responses(401))
async def list_models(request: Request) -> dict:
    """Every model with its ready versions, the versions loading, and those that failed (with why)."""
    return repository_of(request).listing()


def describe(repository: ModelRepository, name: str, version: int | None) -> dict:
    model = repository.resolve(name, version)
    return {**model.describe(), "versions": [str(v) for v in repository.versions(name)]}


@router.get("/models/{name}", response_model=ModelDescription, responses=METADATA_ERRORS)
async def model_metadata(
    name: str, request: Request, version: int | None = Query(None, ge=1, lt=VERSION_LIMIT)
) -> dict:
    """Dims, bounds, K limits, provider, training env and success rate of a model version."""
    return describe(repository_of(request), name, version)


@router.get("/models/{name}/versions/{version}", response_model=ModelDescription, responses=METADATA_ERRORS)
async def model_version_metadata(name: str, request: Request, version: int = VersionPath) -> dict:
    return describe(repository_of(request), name, version)


@router.post("/repository/reload", response_model=ReloadReport, responses=error_responses(401))
async def reload_repository(request: Request) -> dict:
    """Scan the model repository now (new versions load and verify before serving); failed ones retry."""
    return await repository_of(request).reload(retry_failed=True)
