"""Fair shares of a decoding step between clients: no client's rows can slow the others'
streams much, however many it opens.

Each step, a client with more than its share of the decoding rows (the rows divided by the
clients that have any) has only that many of them stepped, taken in turn, so its streams
advance more slowly; every other client's rows step every time. With one client, or
clients of similar size, every row steps. A row that waits keeps its state: its text is
the same, only later.

    rows   client   share = ceil(7 rows / 3 clients) = 3
    0..3   A (4)    3 of A's 4 rows step, the 4th waits a step (then another waits)
    4..5   B (2)    both step
    6      C (1)    steps
"""

from __future__ import annotations

import math
from collections import defaultdict

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
