"""Count history: per-minute series for charts, raw counts as JSON or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, StreamingResponse

from shore.storage import Storage
from shore.web.deps import TimeRange, get_storage, require_token
from shore.web.schemas import SeriesOut

router = APIRouter(prefix="/api", tags=["counts"], dependencies=[Depends(require_token)])

CSV_COLUMNS = (
    "device_id",
    "camera_id",
    "ts",
    "seq",
    "session",
    "frame",
    "count",
    "unique_count",
    "frames",
    "count_sum",
    "count_max",
    "historical",
    "model",
    "outbox_id",
)


@router.get(
    "/series",
    response_model=SeriesOut,
    summary="Per-minute counts of a device's cameras (columnar)",
    response_class=JSONResponse,
)
def series(
    device_id: str = Query(description="Device id."),
    camera_id: str | None = Query(None, description="One camera (default: all of the device's)."),
    window: TimeRange = Depends(),
    storage: Storage = Depends(get_storage),
) -> JSONResponse:
    # Returned as built: re-validating 14,400 points through the response model would cost more than the query.
    return JSONResponse(storage.series(device_id, window.start, window.end, camera_id))


@router.get("/counts", summary="Raw counts (JSON, oldest first)")
def counts(
    device_id: str | None = Query(None),
    camera_id: str | None = Query(None),
    limit: int = Query(1000, ge=1, le=100_000),
    window: TimeRange = Depends(),
    storage: Storage = Depends(get_storage),
) -> list[dict[str, Any]]:
    out = []
    for row in storage.count_rows(window.start, window.end, device_id, camera_id):
        out.append(row)
        if len(out) >= limit:
            break
    return out


def _csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for i, row in enumerate(rows):
        writer.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
        if i % 500 == 499:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _cell(value: Any) -> Any:
    # A device-supplied string starting with = + - @ would be a formula in a spreadsheet.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


@router.get("/counts.csv", summary="Raw counts as CSV (streamed)", response_class=StreamingResponse)
def counts_csv(
    device_id: str | None = Query(None),
    camera_id: str | None = Query(None),
    window: TimeRange = Depends(),
    storage: Storage = Depends(get_storage),
) -> StreamingResponse:
    rows = storage.count_rows(window.start, window.end, device_id, camera_id)
    return StreamingResponse(
        _csv_lines(rows),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="starfish-counts.csv"'},
    )
