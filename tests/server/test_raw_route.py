"""`RawRequestRoute`: the hot routes skip FastAPI's per-request parameter resolution but stay documented."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient

from server.app import create_app
from server.routes.raw import RawRequestRoute, RawRoutes
from server.settings import ServerSettings

HOT_ROUTES = {"/v1/act", "/v1/models/{name}/act", "/v2/models/{name}/infer"}


def test_an_endpoint_gets_the_request_and_its_path_parameters_and_is_documented():
    hot = RawRoutes(prefix="/items", tags=["items"])

    @hot.post("/{name}/echo", responses={404: {"description": "no such item"}})
    async def echo(name: str, request: Request) -> Response:
        return Response(name.encode() + b":" + await request.body(), media_type="text/plain")

    app = FastAPI()
    hot.install(app)
    answer = TestClient(app).post("/items/a%20b/echo", content=b"payload")
    assert answer.status_code == 200 and answer.text == "a b:payload"
    operation = app.openapi()["paths"]["/items/{name}/echo"]["post"]
    assert operation["parameters"][0]["name"] == "name" and "404" in operation["responses"]
    assert operation["tags"] == ["items"]


def test_an_endpoint_with_parameters_fastapi_would_have_to_resolve_is_refused():
    async def typed(name: str, request: Request, version: int = 1) -> Response:
        return Response()

    with pytest.raises(TypeError, match="takes `request` and its path's parameters"):
        RawRequestRoute("/items/{name}", typed, methods=["POST"])
    with pytest.raises(TypeError, match="takes `request`"):
        RawRequestRoute("/items", lambda: None, methods=["POST"])


def test_the_servers_act_and_infer_routes_are_raw_and_keep_their_contract():
    app = create_app(ServerSettings())
    # on the app itself, ahead of every included router (one matching layer less)
    routes = app.router.routes
    raw = [i for i, route in enumerate(routes) if isinstance(route, RawRequestRoute)]
    included = [i for i, route in enumerate(routes) if type(route).__name__ == "_IncludedRouter"]
    assert {routes[i].path for i in raw} == HOT_ROUTES
    assert included and max(raw) < min(included)
    paths = app.openapi()["paths"]
    for path in HOT_ROUTES:
        operation = paths[path]["post"]
        assert "requestBody" in operation and {"200", "404", "422"} <= set(operation["responses"])
