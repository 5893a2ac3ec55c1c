"""Surveys: named time windows (saved) and agent sessions (implicit), each with totals; CSV export."""

from __future__ import annotations

import csv
import io
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import Response

from shore.storage import Storage, Survey
from shore.web.deps import get_storage, require_token
from shore.web.schemas import SurveyIn, SurveyOut

router = APIRouter(prefix="/api", tags=["surveys"], dependencies=[Depends(require_token)])

_TOTAL_COLUMNS = ("unique", "frames", "minutes", "starfish_per_minute", "mean_in_view", "cameras")


def _window(storage: Storage, s: Survey) -> dict[str, Any]:
    totals = storage.totals(s.start, s.end, s.device_id, s.camera_id)
    return {
        "kind": "window",
        "id": s.id,
        "name": s.name,
        "start": s.start,
        "end": s.end,
        "device_id": s.device_id,
        "camera_id": s.camera_id,
        "totals": totals.as_dict(),
    }


def _all(storage: Storage, device_id: str | None) -> list[dict[str, Any]]:
    named = [_window(storage, s) for s in storage.surveys() if device_id is None or s.device_id in (None, device_id)]
    sessions = [
        {"kind": "session", "name": f"{s['device_id']} session {s['session']}", **s}
        for s in storage.sessions(device_id)
    ]
    return named + sessions


@router.get("/surveys", response_model=list[SurveyOut], summary="Named surveys, then recent agent sessions")
def list_surveys(device_id: str | None = Query(None), storage: Storage = Depends(get_storage)) -> list[dict[str, Any]]:
    return _all(storage, device_id)


@router.post("/surveys", response_model=SurveyOut, status_code=status.HTTP_201_CREATED, summary="Save a survey")
def create_survey(body: SurveyIn, storage: Storage = Depends(get_storage)) -> dict[str, Any]:
    try:
        survey = storage.create_survey(body.name, body.start, body.end, body.device_id, body.camera_id)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return _window(storage, survey)


@router.get("/surveys/{survey_id}", response_model=SurveyOut, summary="One saved survey with its totals")
def get_survey(survey_id: int, storage: Storage = Depends(get_storage)) -> dict[str, Any]:
    survey = storage.survey(survey_id)
    if survey is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no survey {survey_id}")
    return _window(storage, survey)


@router.get("/surveys.csv", summary="Every survey with its totals, as CSV", response_class=Response)
def surveys_csv(device_id: str | None = Query(None), storage: Storage = Depends(get_storage)) -> Response:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["kind", "name", "device_id", "camera_id", "session", "start", "end", *_TOTAL_COLUMNS])
    for s in _all(storage, device_id):
        name = s["name"]
        if name[:1] in ("=", "+", "-", "@"):
            name = "'" + name
        writer.writerow(
            [
                s["kind"],
                name,
                s.get("device_id"),
                s.get("camera_id"),
                s.get("session"),
                s["start"],
                s["end"],
                *(s["totals"][c] for c in _TOTAL_COLUMNS),
            ]
        )
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="starfish-surveys.csv"'},
    )
