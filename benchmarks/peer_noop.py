"""The floor for benchmarks/serve.py --peers: a FastAPI app that answers mfql's REST shape and does nothing.

    MFQL_PEER_BUNDLE=server/default_model/cube-single/1 uvicorn benchmarks.peer_noop:app --port 0

`GET /v1/models/{name}` returns the bundle's dims (so mfql-bench can drive it) and
`POST /v1/models/{name}/act` reads the body and returns a constant answer: what FastAPI and
uvicorn cost per request on this machine, with no model and no validation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import FastAPI, Request, Response

METADATA = json.loads((Path(os.environ["MFQL_PEER_BUNDLE"]) / "metadata.json").read_text())
DESCRIPTION = {key: METADATA[key] for key in ("name", "obs_dim", "action_dim", "max_num_candidates")}
ANSWER = json.dumps(
    {"action": [0.0] * METADATA["action_dim"], "q_value": 0.0, "num_candidates": 1, "seed": 0}
).encode()

app = FastAPI()


@app.get("/v1/models/{name}")
async def describe(name: str) -> dict:
    return DESCRIPTION


@app.post("/v1/models/{name}/act")
async def act(name: str, request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")
