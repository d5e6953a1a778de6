"""Structured access logs: one JSON line per request, written when its response has ended.

    {"time": "2025-01-01T12:00:00.123+00:00", "method": "POST", "path": "/generate/stream",
     "status": 200, "duration_ms": 812.4, "bytes": 5120, "client": "127.0.0.1"}

`client` is the request's client as app/gate/identity.py resolved it: behind a trusted
proxy, the one its X-Forwarded-For vouches for. The query string is left out: GET
/generate/stream carries the prime in it, and prompts do not belong in logs. `python -m app`
(and `uvicorn app.main:app`) print these lines on stdout and switch uvicorn's own access
log off (`uvicorn --no-access-log` for the latter).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.gate.hang_up import unanswered_status
from app.gate.identity import client_of

LOGGER_NAME = "charrnn.access"


def configure_access_logger() -> logging.Logger:
    """Give the access logger a bare stdout handler (idempotent): the lines are the JSON."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not again through whatever the root logger prints
    return logger


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None):
        self.app = app
        self.logger = logger or logging.getLogger(LOGGER_NAME)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        failed = True
        sent = 0

        async def counted_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
            failed = False
        finally:
            line = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "method": scope["method"],
                "path": scope["path"],
                "status": status if status is not None else unanswered_status(failed),
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "bytes": sent,
                "client": client_of(scope),
            }
            # ASCII only: a path may carry control characters (C0, C1), U+2028 and the like,
            # which a log viewer would act on; escaped, a line stays one line of text.
            self.logger.info(json.dumps(line, ensure_ascii=True))
