"""Fleet state: devices with their cameras, model and update state; health and rejection counters."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request

from shore.storage import Storage
from shore.web.deps import get_storage, require_token
from shore.web.schemas import DeviceOut, HealthOut

router = APIRouter(prefix="/api", tags=["devices"], dependencies=[Depends(require_token)])


@router.get("/devices", response_model=list[DeviceOut], summary="Every device with its latest state")
def list_devices(storage: Storage = Depends(get_storage)) -> list[dict[str, Any]]:
    return storage.devices()


@router.get("/health", response_model=HealthOut, summary="Engine, ingest counters, rejected messages")
def health(request: Request, storage: Storage = Depends(get_storage)) -> dict[str, Any]:
    ingest = request.app.state.ingest_stats
    return {
        "engine": storage.engine,
        "ingest": dataclasses.asdict(ingest) if ingest is not None else None,
        "rejects": storage.rejects(),
    }
