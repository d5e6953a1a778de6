"""app/gate/log_limit.py: one kind of warning reaches the log at a bounded rate, and under a
real server a scan of malformed requests writes a few lines, not one per request."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from app.gate.connections import uvicorn_options
from app.gate.log_limit import LIMITED_LOGGERS, MAX_KINDS, RepeatLimit, limited_logs
from app.main import create_app
from app.settings import Settings
from tests.app.support import running_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", level, __file__, 1, msg, args, None)


def test_a_burst_then_a_rate_and_the_count_of_what_was_dropped() -> None:
    clock = Clock()
    limit = RepeatLimit(per_minute=3, clock=clock)
    passed = [limit.filter(record("Invalid HTTP request received.")) for _ in range(5)]
    assert passed == [True, True, True, False, False]
    clock.now += 20  # one more a minute's third
    line = record("Invalid HTTP request received.")
    assert limit.filter(line)
    assert line.getMessage() == "Invalid HTTP request received. (2 more like this dropped)"
    assert not limit.filter(record("Invalid HTTP request received."))


def test_a_message_is_its_format_string_whatever_its_arguments() -> None:
    limit = RepeatLimit(per_minute=2, clock=Clock())
    assert limit.filter(record("request failed: %s", "a"))
    assert limit.filter(record("request failed: %s", "b"))
    assert not limit.filter(record("request failed: %s", "c"))
    assert limit.filter(record("another message"))  # its own budget
    dropped_then_passed = RepeatLimit(per_minute=1, clock=(clock := Clock()))
    dropped_then_passed.filter(record("request failed: %s", "x"))
    dropped_then_passed.filter(record("request failed: %s", "y"))
    clock.now += 60
    line = record("request failed: %s", "50% of it")
    assert dropped_then_passed.filter(line)
    assert line.getMessage() == "request failed: 50% of it (1 more like this dropped)"


def test_errors_always_pass() -> None:
    limit = RepeatLimit(per_minute=1, clock=Clock())
    assert all(limit.filter(record("boom", level=logging.ERROR)) for _ in range(10))


def test_the_messages_tracked_are_bounded() -> None:
    limit = RepeatLimit(per_minute=1, clock=Clock())
    for n in range(MAX_KINDS + 500):
        limit.filter(record(f"message {n}"))
    assert len(limit._kinds) == MAX_KINDS


@pytest.mark.parametrize("per_minute", [0, -1])
def test_a_rate_below_one_is_refused(per_minute: int) -> None:
    with pytest.raises(ValueError, match="per_minute"):
        RepeatLimit(per_minute)


def test_limited_logs_installs_the_limit_and_takes_it_away() -> None:
    loggers = [logging.getLogger(name) for name in LIMITED_LOGGERS]
    with limited_logs(5) as limit:
        assert all(limit in logger.filters for logger in loggers)
    assert all(limit not in logger.filters for logger in loggers)
    with limited_logs(0) as none:  # no limit
        assert none is None


@pytest.mark.parametrize("value", ["-1", "1.5", "often"])
def test_log_repeats_per_minute_is_a_count(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LOG_REPEATS_PER_MINUTE", value)
    with pytest.raises(ValidationError, match="log_repeats_per_minute"):
        Settings()


def test_a_scan_of_malformed_requests_writes_a_few_lines(settings: Settings) -> None:
    changed = settings.model_copy(update={"log_repeats_per_minute": 5, "access_log": False})
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, line: logging.LogRecord) -> None:
            lines.append(line.getMessage())

    keep = Keep()
    with running_server(create_app(changed), **uvicorn_options(changed.connection_limits())) as url:
        parts = urlsplit(url)
        logging.getLogger("uvicorn.error").addHandler(keep)  # after uvicorn's own set-up
        try:
            for _ in range(100):
                with socket.create_connection((parts.hostname, parts.port)) as sock:
                    sock.sendall(b"\x00\x01 not a request\r\n\r\n")
                    sock.settimeout(5)
                    assert sock.recv(4096).startswith(b"HTTP/1.1 400")
        finally:
            logging.getLogger("uvicorn.error").removeHandler(keep)
    invalid = [line for line in lines if line.startswith("Invalid HTTP request received.")]
    assert len(invalid) == 5  # of 100; the rest dropped
