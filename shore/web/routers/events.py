"""Live updates by Server-Sent Events.

Event ids are the newest stored count id, so a browser that reconnects (EventSource sends `Last-Event-ID` by
itself) gets every camera whose latest count changed meanwhile, not a replay of every frame. Events:

* `counts` (with `id`): `{"cursor": n, "cameras": [latest count of each changed camera]}`
* `devices` (no id): the full device list, sent on connect and when a state changes (status, model, update,
  stats); changes of last-seen times alone at most every 5 s
* a `: ping` comment after `sse_heartbeat_s` of silence keeps proxies and the browser from timing out
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from shore.storage import Storage
from shore.web.deps import get_storage, require_token

router = APIRouter(prefix="/api", tags=["events"], dependencies=[Depends(require_token)])


def _event(name: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


_VOLATILE_DEVICE = ("last_seen",)
_VOLATILE_CAMERA = ("last_seen", "last_ts", "last_seq", "last_count", "last_unique", "last_count_id")
_VOLATILE_EVERY_S = 5.0  # last-seen times alone are re-sent at most this often; counts travel in `counts` events


def _signature(devices: list[dict[str, Any]]) -> str:
    """The device list without the fields every message changes: a change here is news (status, model, update)."""
    stable = []
    for d in devices:
        doc = {k: v for k, v in d.items() if k not in _VOLATILE_DEVICE and k != "cameras"}
        doc["cameras"] = [{k: v for k, v in c.items() if k not in _VOLATILE_CAMERA} for c in d["cameras"]]
        stable.append(doc)
    return json.dumps(stable, sort_keys=True)


def _cursor(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        cursor = int(value.strip())
    except ValueError:
        return None  # not one of ours (or from an older process): start from a full snapshot
    return cursor if cursor >= 0 else None


@router.get(
    "/events", summary="Live updates (text/event-stream; resumes from Last-Event-ID)", response_class=StreamingResponse
)
async def events(
    request: Request,
    storage: Storage = Depends(get_storage),
    last_event_id: str | None = Header(None, description="Sent by EventSource on reconnect."),
) -> StreamingResponse:
    heartbeat: float = request.app.state.web.sse_heartbeat_s
    poll: float = request.app.state.web.sse_poll_s
    shutdown: asyncio.Event = request.app.state.shutdown
    resume = _cursor(last_event_id)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        cursor, cams = await run_in_threadpool(storage.live_since, -1 if resume is None else resume)
        devices = await run_in_threadpool(storage.devices)
        last_full, last_stable = json.dumps(devices, sort_keys=True), _signature(devices)
        devices_sent = time.monotonic()
        yield _event("devices", devices)
        yield _event("counts", {"cursor": cursor, "cameras": cams}, cursor)
        quiet_since = time.monotonic()
        while not shutdown.is_set():
            try:
                await asyncio.wait_for(shutdown.wait(), timeout=poll)
            except asyncio.TimeoutError:
                pass
            if await request.is_disconnected():
                return
            sent = False
            top, cams = await run_in_threadpool(storage.live_since, cursor)
            if top != cursor or cams:
                cursor = top
                yield _event("counts", {"cursor": cursor, "cameras": cams}, cursor)
                sent = True
            devices = await run_in_threadpool(storage.devices)
            full, stable = json.dumps(devices, sort_keys=True), _signature(devices)
            now = time.monotonic()
            if stable != last_stable or (full != last_full and now - devices_sent >= _VOLATILE_EVERY_S):
                last_full, last_stable, devices_sent = full, stable, now
                yield _event("devices", devices)
                sent = True
            if sent:
                quiet_since = now
            elif now - quiet_since >= heartbeat:
                quiet_since = now
                yield ": ping\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
