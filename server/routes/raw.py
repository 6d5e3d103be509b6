"""`RawRequestRoute`: a route FastAPI documents like any other but serves without its per-request machinery.

FastAPI resolves every endpoint's parameters on each request (dependency solving, path and
body handling, response serialisation): about 70-100 us of CPU per act request in an
in-process profile, more than the rest of mfql's own handler. The hot routes (REST act, v2
infer) already read the raw body, validate it in one pydantic-core pass and encode the answer
once, so they need none of it. This route class keeps the OpenAPI operation FastAPI derives from
the endpoint's signature and decorator arguments (the contract schemathesis checks), and calls
the endpoint with the `Request` and the path's parameters (as strings) directly.

Only for endpoints whose parameters are `request: Request` plus free string path parameters,
that return a `Response` themselves; `__init__` refuses anything else.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

Endpoint = TypeVar("Endpoint", bound=Callable[..., Awaitable[Response]])


class RawRequestRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        parameters = inspect.signature(endpoint).parameters
        path_names = {name for name in parameters if "{" + name + "}" in path}
        if "request" not in parameters or set(parameters) - path_names - {"request"}:
            raise TypeError(
                f"{endpoint.__name__}: a raw route's endpoint takes `request` and its path's parameters "
                f"{sorted(path_names)} only; got {list(parameters)}"
            )
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            return await endpoint(request=request, **request.path_params)

        return handle


def raw_post(router: APIRouter, path: str, **documented: Any) -> Callable[[Endpoint], Endpoint]:
    """`@raw_post(router, path, responses=..., openapi_extra=...)`: like `@router.post`, served raw."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(
            path, endpoint, methods=["POST"], route_class_override=RawRequestRoute, **documented
        )
        return endpoint

    return register
