"""REST sessions: open one explicitly, read its counters, start a new episode, end it.

A session is also created on first use by any act request that names a `session_id`; these
routes are for clients that want to choose its options (hand-over, limits, seed stream,
recording) before the first step, or to end it at once rather than let it expire.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Body, Path, Request

from server.deps import sessions_of
from server.schemas import SESSION_ID_PATTERN, SessionBody, SessionOptionsBody, SessionState, error_responses
from server.sessions import SessionOptions

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
OptionalBody = Body(None)
SessionIdPath = Path(pattern=SESSION_ID_PATTERN, description="the session's id")


@router.post(
    "", response_model=SessionState, status_code=201, responses=error_responses(400, 401, 413, 422, 503)
)
async def open_session(request: Request, body: SessionBody | None = OptionalBody) -> dict:
    """Open a session (replacing an open one of the same id): episode 0, step 0, its options and seed stream.

    503 with Retry-After when `--max-sessions` sessions are open."""
    body = body or SessionBody()
    values = body.model_dump(exclude_none=True, exclude={"session_id", "seed"})
    session = sessions_of(request).open(
        f"rest:{body.session_id or uuid.uuid4().hex}",
        seed=body.seed,
        options=SessionOptions().updated(values),
    )
    return session.describe()


@router.post(
    "/{session_id}/reset", response_model=SessionState, responses=error_responses(400, 401, 404, 413, 422)
)
async def reset_session(
    request: Request, session_id: str = SessionIdPath, body: SessionOptionsBody | None = OptionalBody
) -> dict:
    """Start a new episode: the step counter, the last chunk and the recording file start afresh;
    options sent here replace the session's."""
    store = sessions_of(request)
    session = store.get(f"rest:{session_id}")
    store.reset(session, body.model_dump(exclude_none=True) if body else None)
    return session.describe()


@router.api_route(
    "/{session_id}",
    methods=["GET", "DELETE"],
    response_model=SessionState,
    responses=error_responses(401, 404, 422),
)
async def session(request: Request, session_id: str = SessionIdPath) -> dict:
    """GET: the session's counters. DELETE: end it now (its recording is closed), answering its last counters.

    One route for both methods, so a 405 names them both in `Allow`."""
    store = sessions_of(request)
    state = store.get(f"rest:{session_id}").describe()
    if request.method == "DELETE":
        store.close(f"rest:{session_id}", "ended")
    return state
