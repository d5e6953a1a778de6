"""app/gate/access_log.py: one JSON line per request, without the query string."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.engine.service import ModelService
from app.gate.access_log import LOGGER_NAME, AccessLogMiddleware, configure_access_logger
from app.main import create_app
from app.settings import Settings

pytestmark = pytest.mark.anyio


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


@pytest.fixture
def access_lines() -> Iterator[list[dict]]:
    logger = logging.getLogger(LOGGER_NAME)
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_one_json_line_per_request(
    client: httpx.AsyncClient, access_lines: list[dict]
) -> None:
    await client.get("/generate/stream", params={"prime": "secret words", "length": 7})
    await client.post("/generate", json={"length": -1})
    stream, invalid = access_lines
    assert (stream["method"], stream["path"], stream["status"]) == ("GET", "/generate/stream", 200)
    assert "secret" not in json.dumps(stream)  # the query (a prime) is never logged
    assert stream["duration_ms"] >= 0 and stream["bytes"] > 0
    assert stream["client"] == "127.0.0.1" and stream["time"].endswith("+00:00")
    assert (invalid["path"], invalid["status"]) == ("/generate", 422)


def test_configure_prints_bare_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    saved, level, propagate = list(logger.handlers), logger.level, logger.propagate
    for handler in saved:
        logger.removeHandler(handler)
    try:
        configured = configure_access_logger()
        assert configure_access_logger() is configured and len(configured.handlers) == 1
        configured.info('{"status": 200}')
        assert capsys.readouterr().out == '{"status": 200}\n'
        assert not configured.propagate
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


async def test_the_client_is_the_one_a_trusted_proxy_names(
    settings: Settings, service: ModelService, access_lines: list[dict]
) -> None:
    """127.0.0.1 (a trusted proxy by default) vouches for 203.0.113.7; 198.51.100.9 (no
    proxy) writes the same header and is logged as itself."""
    app = create_app(settings, service)
    header = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}
    for peer in ("127.0.0.1", "198.51.100.9"):
        transport = httpx.ASGITransport(app=app, client=(peer, 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/health", headers=header)).status_code in (200, 503)
    assert [line["client"] for line in access_lines] == ["203.0.113.7", "198.51.100.9"]


class RawLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.raw: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.raw.append(record.getMessage())

    @classmethod
    def on(cls, name: str) -> tuple[RawLines, logging.Logger]:
        """A logger of its own with this handler, at INFO."""
        handler, logger = cls(), logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        return handler, logger


async def test_control_characters_in_a_path_are_escaped() -> None:
    handler, logger = RawLines.on("test.access.escape")

    async def not_found(scope: dict, receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def ignore(message: dict) -> None:
        pass

    # C1 controls (U+0085 NEL, U+009B CSI), a line and a paragraph separator, and ESC: what
    # an HTTP parser may hand on in a path, percent-decoded.
    path = "/no\u0085such\u009b[2J\u2028path\u2029\x1b[31m"
    scope = {"type": "http", "method": "GET", "path": path, "client": ("10.0.0.9", 1)}
    await AccessLogMiddleware(not_found, logger)(scope, None, ignore)  # type: ignore[arg-type]
    (line,) = handler.raw
    assert line.isascii() and line.isprintable()  # nothing a terminal or log viewer acts on
    assert json.loads(line)["path"] == path  # and nothing lost


async def test_a_request_that_sent_nothing_is_499_if_its_client_left_500_if_it_failed() -> None:
    handler, logger = RawLines.on("test.access.unanswered")

    async def left(scope: dict, receive: object, send: Any) -> None:
        pass  # as HangUpMiddleware ends a request whose client hung up: quietly, no answer

    async def failed(scope: dict, receive: object, send: Any) -> None:
        raise RuntimeError("the app failed")

    scope = {"type": "http", "method": "POST", "path": "/score", "client": ("10.0.0.9", 1)}
    await AccessLogMiddleware(left, logger)(scope, None, None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await AccessLogMiddleware(failed, logger)(scope, None, None)  # type: ignore[arg-type]
    assert [json.loads(line)["status"] for line in handler.raw] == [499, 500]
