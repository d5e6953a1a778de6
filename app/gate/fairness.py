"""Fair shares of the engine between clients: no client's requests can slow the others'
streams much, however many it sends.

FairShare: a decoding step's rows.

Each step, a client may step as many rows as the other clients hold on average, or
`floor_rows` shared by all the step's clients (floor_rows / clients), whichever is more;
a client holding more has that many of them stepped, taken in turn, so its streams
advance more slowly, and every other client's rows step every time. A client alone, or
clients of similar size, step every row. A row that waits keeps its state: its text is
the same, only later.

    floor_rows = 8     others' average         floor: ceil(8 / 3)   share
    rows 0..5   A (6)  ceil((2 + 1) / 2) = 2   3                    3 of A's 6, in turn
    rows 6..7   B (2)  ceil((6 + 1) / 2) = 4   3                    4: both step
    row 8       C (1)  ceil((6 + 2) / 2) = 4   3                    4: it steps

A client's own rows do not raise its share, however many it holds: beside 64 clients of
one stream each, a client with 128 steps one row, as they do. When the others leave, its
share grows only to the floor's part, so the last streams of other clients keep short
steps; alone, it steps every row.

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
    def __init__(self, floor_rows: int) -> None:
        if floor_rows < 1:
            raise ValueError(f"floor_rows must be at least 1, got {floor_rows}")
        self.floor_rows = floor_rows
        self._turn: defaultdict[object, int] = defaultdict(int)  # where each client resumes

    def rows(self, rows: np.ndarray, clients: list[object]) -> np.ndarray:
        """The rows (m,) to step, given each row's client (None: each row alone)."""
        by_client: defaultdict[object, list[int]] = defaultdict(list)
        for row, client in zip(rows.tolist(), clients, strict=True):
            by_client[client if client is not None else ("row", row)].append(row)
        for gone in self._turn.keys() - by_client.keys():
            del self._turn[gone]
        if len(by_client) <= 1:
            return rows
        total, others = len(rows), len(by_client) - 1
        floor = math.ceil(self.floor_rows / len(by_client))
        chosen, held_back = [], False
        for key, owned in by_client.items():
            share = max(floor, math.ceil((total - len(owned)) / others))
            if len(owned) <= share:
                chosen.extend(owned)
                continue
            held_back = True
            start = self._turn[key] % len(owned)
            chosen.extend((owned[start:] + owned[:start])[:share])
            self._turn[key] = start + share
        return np.asarray(sorted(chosen), np.int64) if held_back else rows


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
