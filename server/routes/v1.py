"""Native REST (JSON): act, model listing and metadata, repository reload."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.deps import MetricsDep, RepositoryDep
from server.repository import ModelRepository
from server.schemas import ActBody, ActResponse, ModelDescription, ModelListing, ReloadReport
from server.served_model import ActResult

router = APIRouter(prefix="/v1", tags=["native REST"])


def rest_answer(result: ActResult, single: bool) -> dict:
    answer: dict = (
        {"action": result.actions[0].tolist(), "q_value": float(result.q_values[0])}
        if single
        else {"actions": result.actions.tolist(), "q_values": result.q_values.tolist()}
    )
    answer.update(
        num_candidates=result.num_candidates,
        model=result.model,
        version=str(result.version),
        seed=result.seed,
        timing_ms=result.timing_ms,
    )
    return answer


async def act_on(
    name: str | None, body: ActBody, repository: RepositoryDep, metrics: MetricsDep
) -> JSONResponse:
    received = time.perf_counter()
    with metrics.track("rest") as tracked:
        model = repository.resolve(name, body.version)
        tracked.model = model.name
        single = body.observation is not None
        request = model.check_request(
            body.observation if single else body.observations,
            field_name="observation" if single else "observations",
            num_candidates=body.num_candidates,
            seed=body.seed,
            deadline_ms=body.deadline_ms,
            received=received,
        )
        result = await model.act(request, received)
        metrics.record_result(model.name, result.num_candidates, result.q_values)
        return JSONResponse(rest_answer(result, single))


@router.post("/models/{name}/act", response_model=ActResponse)
async def act(name: str, body: ActBody, repository: RepositoryDep, metrics: MetricsDep) -> JSONResponse:
    """Actions for one observation or a batch, from model `name` (newest ready version unless `version`)."""
    return await act_on(name, body, repository, metrics)


@router.post("/act", response_model=ActResponse)
async def act_default(body: ActBody, repository: RepositoryDep, metrics: MetricsDep) -> JSONResponse:
    """Like `/v1/models/{name}/act` for the default model: `MFQL_DEFAULT_MODEL`, else the only model,
    else the first ready model by name (`GET /v1/models` says which)."""
    return await act_on(None, body, repository, metrics)


@router.get("/models", response_model=ModelListing)
async def list_models(repository: RepositoryDep) -> dict:
    """Every model with its ready versions, the versions loading, and those that failed (with why)."""
    return repository.listing()


def describe(repository: ModelRepository, name: str, version: str | None) -> dict:
    model = repository.resolve(name, version)
    return {**model.describe(), "versions": [str(v) for v in repository.versions(name)]}


@router.get("/models/{name}", response_model=ModelDescription)
async def model_metadata(name: str, repository: RepositoryDep, version: str | None = None) -> dict:
    """Dims, bounds, K limits, provider, training env and success rate of a model version."""
    return describe(repository, name, version)


@router.get("/models/{name}/versions/{version}", response_model=ModelDescription)
async def model_version_metadata(name: str, version: str, repository: RepositoryDep) -> dict:
    return describe(repository, name, version)


@router.post("/repository/reload", response_model=ReloadReport)
async def reload_repository(repository: RepositoryDep) -> dict:
    """Scan the model repository now (new versions load and verify before serving); failed ones retry."""
    return await repository.reload(retry_failed=True)
