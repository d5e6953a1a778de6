"""Fair shares of the engine between clients: no client's requests can slow the others'
streams much, however many it sends.

FairShare: a decoding step's rows.

Each step, a client with more than its share of the decoding rows (the rows divided by the
clients that have any) has only that many of them stepped, taken in turn, so its streams
advance more slowly; every other client's rows step every time. With one client, or
clients of similar size, every row steps. A row that waits keeps its state: its text is
the same, only later.

    rows   client   share = ceil(7 rows / 3 clients) = 3
    0..3   A (4)    3 of A's 4 rows step, the 4th waits a step (then another waits)
    4..5   B (2)    both step
    6      C (1)    steps

PrimeCredit: prefill, while streams decode. Each client may have `burst` characters of
prime read at once, and then `rate` a second (a token bucket per client): a user's
occasional long prime goes at full speed, a client that sends long primes without pause
gets about one stream's worth of the engine, not the whole prefill budget.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np


class FairShare:
    def __init__(self) -> None:
        self._turn: defaultdict[object, int] = defaultdict(int)  # where each client resumes

    def rows(self, rows: np.ndarray, clients: list[object]) -> np.ndarray:
        """The rows (m,) to step, given each row's client (None: each row alone)."""
        by_client: defaultdict[object, list[int]] = defaultdict(list)
        for row, client in zip(rows.tolist(), clients, strict=True):
            by_client[client if client is not None else ("row", row)].append(row)
        for gone in self._turn.keys() - by_client.keys():
            del self._turn[gone]
        share = math.ceil(len(rows) / len(by_client)) if by_client else 0
        if all(len(owned) <= share for owned in by_client.values()):
            return rows
        chosen = []
        for key, owned in by_client.items():
            if len(owned) <= share:
                chosen.extend(owned)
                continue
            start = self._turn[key] % len(owned)
            chosen.extend((owned[start:] + owned[:start])[:share])
            self._turn[key] = start + share
        return np.asarray(sorted(chosen), np.int64)


FORGET_AFTER = 1024  # clients remembered before those with a full credit are swept


class PrimeCredit:
    """Prime characters each client may have read now: up to `burst`, refilled at `rate` a
    second; spending may run into debt (a batched slice reads one character for each of a
    client's rows), which the client then waits out. rate 0: no limit. A job without a
    client (None) is never held back."""

    def __init__(
        self, burst: int, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if not 0 <= rate < math.inf:
            raise ValueError(f"rate must be ≥ 0 and finite, got {rate}")
        self.burst, self.rate, self.clock = burst, rate, clock
        self._credit: dict[object, tuple[float, float]] = {}  # client → (credit, as of when)
        self._sweep_at = FORGET_AFTER

    def allows(self, client: object) -> bool:
        """Whether the client's primes may read characters now."""
        return client is None or self.rate == 0 or self._now(client) > 0

    def spend(self, client: object, chars: int) -> None:
        if client is None or self.rate == 0:
            return
        self._credit[client] = (self._now(client) - chars, self.clock())
        if len(self._credit) > self._sweep_at:  # forget the clients whose credit is full again
            for other in list(self._credit):
                self._now(other)
            self._sweep_at = max(FORGET_AFTER, 2 * len(self._credit))  # a sweep stays rare

    def _now(self, client: object) -> float:
        credit, since = self._credit.get(client, (self.burst, 0.0))
        now = self.clock()
        credit = min(self.burst, credit + (now - since) * self.rate)
        if credit >= self.burst:  # full again: nothing to remember
            self._credit.pop(client, None)
        return credit
