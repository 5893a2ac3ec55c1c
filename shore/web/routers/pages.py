"""The dashboard page (one static HTML file; all data arrives by the JSON API and the event stream)."""

from __future__ import annotations

import html

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse

from shore.web.deps import TOKEN_COOKIE, token_ok

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    if not token_ok(request):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "open this page with ?token=<token>", headers={"WWW-Authenticate": "Bearer"}
        )
    page = request.app.state.index_html.replace("{{TITLE}}", html.escape(request.app.state.web.title))
    response = HTMLResponse(
        page, headers={"Cache-Control": "no-cache", "Content-Security-Policy": request.app.state.csp}
    )
    token = request.query_params.get("token")
    if token is not None:
        # The page's own requests (fetch, EventSource, CSV links) then carry the token without putting it in URLs.
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
    return response
