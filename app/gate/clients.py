"""Every per-client rule of the engine in one ledger: the quota of requests in
(max_requests_per_client), the rows each client holds (which pace its streams' chunks),
the fair share of a decoding step (app/gate/fairness.py: FairShare) and the prime credit
(PrimeCredit). The engine holds one ledger and calls it as app/engine/clients.py lists;
the early 429 (app/gate/quota.py) and the streams' pacing (app/http) read it too, so each
count exists once.

A client is its address as app/gate/identity resolves it; None is work of no client,
never counted against a quota.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from app.engine.config import EngineConfig
from app.engine.engine import EngineBusy
from app.gate.fairness import FairShare, PrimeCredit


class ClientBusy(EngineBusy):
    """This client already has max_requests_per_client requests running or waiting."""


class ClientLedger:
    """The per-client counts and rules, from the engine's config."""

    def __init__(self, config: EngineConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.limit = config.max_requests_per_client  # 0: no quota
        self._requests: collections.Counter[str] = collections.Counter()
        # The engine claims with its own lock held, a regex compile (app/engine/
        # regex_compiler.py) without it: the count is updated under this one.
        self._requests_lock = threading.Lock()
        # Rows held by each client's requests (each request of no client counts as a
        # client of its own): how chunk_interval shares the event loop's writes.
        self._rows: collections.Counter[object] = collections.Counter()
        self.credit = PrimeCredit(
            config.prefill_burst_chars, config.prefill_chars_per_second, clock
        )

    def full(self, client: str) -> bool:
        """Whether `client` has its quota in already (a quick look without the engine's
        lock: the engine's claim is the check that counts)."""
        return self.limit > 0 and self._requests.get(client, 0) >= self.limit

    def claim(self, client: str | None) -> None:
        if client is None or self.limit == 0:
            return
        with self._requests_lock:
            if self._requests[client] >= self.limit:
                raise ClientBusy(
                    f"this client already has {self.limit} requests running or waiting"
                )
            self._requests[client] += 1

    def release(self, client: str | None) -> None:
        if client is not None and self.limit > 0:
            with self._requests_lock:
                _uncount(self._requests, client)

    def row_taken(self, holder: object) -> None:
        self._rows[holder] += 1

    def row_freed(self, holder: object) -> None:
        _uncount(self._rows, holder)

    def shares(self) -> FairShare:
        return FairShare(self.config.fair_share_rows)

    def chunk_interval(self, client: str | None = None) -> float:
        """Least seconds between two chunks of one of `client`'s streams (None: a stream
        on its own). Each chunk is an HTTP write on the event loop: the loop's
        max_chunks_per_second are shared equally by the clients with rows in the engine,
        and a client's share by its rows, so a client holding many streams open stretches
        its own streams' intervals, not everyone's (never past max_chunk_interval)."""
        config = self.config
        if config.max_chunks_per_second == 0:
            return config.min_chunk_interval
        by_client = self._rows  # a quick look, without the engine's lock
        own = by_client.get(client, 1) if client is not None else 1
        interval = len(by_client) * own / config.max_chunks_per_second
        return min(config.max_chunk_interval, max(config.min_chunk_interval, interval))


def _uncount(counter: collections.Counter, key: object) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
