"""The playground: a static page at / (app/http/static/) over the public API: a Generate view
(POST /generate/stream with every sampling option, per-character probabilities), a Score
view (POST /score as a heat map of surprisal) and a model picker (GET /v1/models, /model).

No build step and nothing fetched from elsewhere: the page, its ES modules (app.js imports
the others) and its style are package data, served as they are, under a CSP that allows no
inline script or style. Public even with API_KEY set; the page asks for the key when the
API answers 401 and keeps it in the browser's localStorage.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"

# Only this origin's own files and API; inline scripts and styles are never needed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
