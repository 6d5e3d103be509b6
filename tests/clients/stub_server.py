"""A scripted HTTP server for client behaviours a healthy mfql server cannot show on demand.

It plays a list of answers in order (the last one repeats) and records every request, so
tests assert on what the client sent and how often, never on how long anything took.
``CHUNKED_METADATA`` and ``chunk_answer`` play a chunked model (action horizon H > 1), whose
REST answer to one observation is a list of H actions.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METADATA = {
    "name": "stub",
    "obs_dim": 3,
    "action_dim": 2,
    "action_low": [-1.0, -1.0],
    "action_high": [1.0, 1.0],
    "default_num_candidates": 1,
    "max_num_candidates": 8,
    "versions": ["1"],
}
ACT_OK = {
    "action": [0.25, -0.5],
    "q_value": 1.5,
    "num_candidates": 1,
    "model": "stub",
    "version": "1",
    "seed": 7,
    "timing_ms": {"queue": 0.1, "inference": 0.2, "total": 0.3},
}


@dataclass
class Answer:
    status: int = 200
    body: dict = field(default_factory=lambda: dict(ACT_OK))
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering: only for "the client gives up" tests


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: dict | None


CHUNK_HORIZON = 3
CHUNKED_METADATA = {**METADATA, "name": "chunked", "action_horizon": CHUNK_HORIZON, "control_period_s": 0.05}


def chunk_actions(index: int, horizon: int = CHUNK_HORIZON) -> list[list[float]]:
    """Chunk number ``index``: step j is the action [index, j / 4] (exact in float32), naming its place."""
    return [[float(index), j / 4] for j in range(horizon)]


def chunk_answer(index: int, horizon: int = CHUNK_HORIZON, **body) -> Answer:
    """The REST answer to one observation of a chunked model, carrying chunk number ``index``."""
    payload = {**ACT_OK, "action": chunk_actions(index, horizon), "action_horizon": horizon, **body}
    return Answer(body=payload)


class StubServer:
    """``with StubServer([Answer(503), Answer()]) as stub: ... stub.url ... stub.requests``.

    ``metadata``: what ``GET /v1/models/{name}`` answers (default: an H = 1 model).
    """

    def __init__(self, answers: list[Answer], metadata: dict = METADATA):
        self.answers = list(answers)
        self.metadata = metadata
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _next_answer(self, seen: Seen) -> Answer:
        with self._lock:
            self.requests.append(seen)
            if seen.path.startswith("/v1/models/") and seen.method == "GET":
                return Answer(body=self.metadata)
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers), json.loads(raw) if raw else None)
                answer = stub._next_answer(seen)
                time.sleep(answer.delay)
                payload = json.dumps(answer.body).encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in answer.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first; that is what the test wanted

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        return Handler

    @property
    def act_requests(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST"]

    def __enter__(self) -> StubServer:
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
