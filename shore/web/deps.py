"""Shared request dependencies: the injected storage, the access token, time-range parsing."""

from __future__ import annotations

import secrets
import time
from datetime import datetime

from fastapi import HTTPException, Query, Request, status

from shore.storage import Storage

TOKEN_COOKIE = "shore_token"


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def token_ok(request: Request) -> bool:
    """True when no token is configured, or the request carries it (Bearer header, cookie, or `?token=`)."""
    expected: str | None = request.app.state.token
    if expected is None:
        return True
    offered = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        offered = header[7:].strip()
    return secrets.compare_digest(offered.encode(), expected.encode())


def require_token(request: Request) -> None:
    if not token_ok(request):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid token is required", headers={"WWW-Authenticate": "Bearer"}
        )


class TimeRange:
    """`start`/`end` (ISO 8601 or epoch seconds), else the last `hours` up to now."""

    def __init__(
        self,
        start: datetime | None = Query(None, description="Range start (ISO 8601 or epoch seconds, UTC)."),
        end: datetime | None = Query(None, description="Range end, exclusive (default: now)."),
        hours: float = Query(24.0, gt=0, le=24 * 366, description="Range length when `start` is not given."),
    ) -> None:
        self.end = end.timestamp() if end is not None else time.time() + 60
        self.start = start.timestamp() if start is not None else self.end - 60 - hours * 3600
        if self.end <= self.start:
            raise HTTPException(422, "end must be after start")
