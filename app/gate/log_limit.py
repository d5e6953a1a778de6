"""LOG_REPEATS_PER_MINUTE: a bound on how often one kind of warning reaches the log.

Some lines are written per request or per connection: uvicorn's "Invalid HTTP request
received." for each malformed request line, "Exceeded concurrency limit." for each
request past MAX_CONNECTIONS, the engine's "request failed: ...". A client sending such
requests without pause (a scan: ~100 a second under benchmarks/hostile_load.py) would
otherwise grow the log by megabytes an hour, until the disk is full.

`RepeatLimit` lets each message (its logger and its format string, whatever the
arguments) through `per_minute` times at once, then `per_minute` a minute (a token
bucket per message); the first line let through after some were dropped says how many.
Errors always pass: a traceback is never hidden.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# The loggers that write per request or per connection (uvicorn's protocols and the app's
# own share "uvicorn.error"; the engine's per-request failures are "charrnn.engine").
LIMITED_LOGGERS = ("uvicorn.error", "charrnn.engine")
MAX_KINDS = 1024  # messages tracked at once; the least recently seen is forgotten


class RepeatLimit(logging.Filter):
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, got {per_minute}")
        self.per_minute = per_minute
        self.clock = clock
        # (logger, format string) → (tokens, as of when, lines dropped since the last one)
        self._kinds: OrderedDict[tuple[str, str], tuple[float, float, int]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        tokens, since, dropped = self._kinds.pop(key, (float(self.per_minute), now, 0))
        tokens = min(self.per_minute, tokens + (now - since) * self.per_minute / 60)
        if tokens < 1:
            self._remember(key, (tokens, now, dropped + 1))
            return False
        if dropped:  # the suffix holds no "%": the record's own arguments still apply
            record.msg = f"{record.msg} ({dropped} more like this dropped)"
        self._remember(key, (tokens - 1, now, 0))
        return True

    def _remember(self, key: tuple[str, str], state: tuple[float, float, int]) -> None:
        self._kinds[key] = state
        while len(self._kinds) > MAX_KINDS:
            self._kinds.popitem(last=False)


@contextmanager
def limited_logs(per_minute: int) -> Iterator[RepeatLimit | None]:
    """RepeatLimit on LIMITED_LOGGERS while the block runs (0: no limit)."""
    if per_minute == 0:
        yield None
        return
    limit = RepeatLimit(per_minute)
    loggers = [logging.getLogger(name) for name in LIMITED_LOGGERS]
    for logger in loggers:
        logger.addFilter(limit)
    try:
        yield limit
    finally:
        for logger in loggers:
            logger.removeFilter(limit)
