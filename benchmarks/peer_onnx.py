"""A plain FastAPI + onnxruntime handler for benchmarks/serve.py --peers: no batching, no queue.

    MFQL_PEER_BUNDLE=server/default_model/cube-single/1 uvicorn benchmarks.peer_onnx:app --port 0

What anyone would write first: parse the JSON body, draw the noise, call the session on the
event loop, answer JSON. Same ONNX Runtime settings as mfql-serve (1 intra-op and 1 inter-op
thread, no spinning, denormals as zero) and the same REST shape, so only the serving differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime
from fastapi import FastAPI, Request

BUNDLE = Path(os.environ["MFQL_PEER_BUNDLE"])
METADATA = json.loads((BUNDLE / "metadata.json").read_text())
DESCRIPTION = {key: METADATA[key] for key in ("name", "obs_dim", "action_dim", "max_num_candidates")}


def session() -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return onnxruntime.InferenceSession(
        str(BUNDLE / "policy.onnx"), options, providers=["CPUExecutionProvider"]
    )


SESSION = session()
RNG = np.random.default_rng()
app = FastAPI()


@app.get("/v1/models/{name}")
async def describe(name: str) -> dict:
    return DESCRIPTION


@app.post("/v1/models/{name}/act")
async def act(name: str, request: Request) -> dict:
    body = await request.json()
    single = "observation" in body
    observation = np.asarray([body["observation"]] if single else body["observations"], np.float32)
    k = int(body.get("num_candidates") or METADATA["default_num_candidates"])
    noise = RNG.standard_normal((observation.shape[0], k, METADATA["action_dim"]), dtype=np.float32)
    action, q_value = SESSION.run(["action", "q_value"], {"observation": observation, "noise": noise})
    if single:
        return {"action": action[0].tolist(), "q_value": float(q_value[0]), "num_candidates": k}
    return {"actions": action.tolist(), "q_values": q_value.tolist(), "num_candidates": k}
