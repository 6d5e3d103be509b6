"""`RawRequestRoute`: a route FastAPI documents like any other but serves without its per-request machinery.

FastAPI resolves every endpoint's parameters on each request (dependency solving, path and
body handling, response serialisation): about 35 us of CPU per act request in process
(`benchmarks/handler_cpu.py`: 320 -> 285 us), twice what mfql's own validation, noise and
metrics cost. The hot routes (REST act, v2
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

from fastapi import FastAPI, Request, Response
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


class RawRoutes:
    """The hot routes of one protocol, declared beside its router and installed on the app itself.

    `@hot.post(path, responses=..., openapi_extra=...)` records a route; `install(app)` adds it to
    the app's own route list, ahead of the included routers: FastAPI resolves an included
    router's routes through one more matching layer (about 25 us per request in process), which
    the hot routes skip. `tags` and `prefix` are the protocol router's, so the OpenAPI document
    groups them as before.
    """

    def __init__(self, prefix: str, tags: list[str]) -> None:
        self.prefix, self.tags = prefix, tags
        self._routes: list[tuple[str, Callable[..., Any], dict[str, Any]]] = []

    def post(self, path: str, **documented: Any) -> Callable[[Endpoint], Endpoint]:
        def register(endpoint: Endpoint) -> Endpoint:
            self._routes.append((self.prefix + path, endpoint, documented))
            return endpoint

        return register

    def install(self, app: FastAPI) -> None:
        for path, endpoint, documented in self._routes:
            app.router.add_api_route(
                path,
                endpoint,
                methods=["POST"],
                tags=self.tags,
                route_class_override=RawRequestRoute,
                **documented,
            )
