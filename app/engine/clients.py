"""What the engine asks about clients, and nothing else: the per-client rules themselves
live in the gate (app/gate/clients.py: ClientLedger), which the service hands to the engine
when it is made. The engine counts no client and decides no share on its own; it calls
these at the moments it spends something on a client:

    submit   → claim(client)          the request counts against the client's quota
    admit    → row_taken(holder)      a decoder row held (paces the client's streams)
    job ends → row_freed / release
    a step   → shares().rows(...)     which of the decoding rows advance (one per lane)
    prefill  → credit.allows / spend  prime characters read while streams decode

A client is its address as the gate resolved it (a str), or None for work of no client
(counted as a client of its own where rows are shared).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class RowShares(Protocol):
    def rows(self, rows: np.ndarray, clients: list[object]) -> np.ndarray:
        """The rows (m,) to step of `rows` (n,), given each row's client."""
        ...


class PrefillCredit(Protocol):
    def allows(self, client: object) -> bool: ...

    def spend(self, client: object, chars: int) -> None: ...


class ClientRules(Protocol):
    """The gate's answers to the engine (each called with the engine's lock held, except
    the shares and the credit, which only the engine thread uses)."""

    credit: PrefillCredit
    limit: int  # requests one client may have in (0: no quota)

    def claim(self, client: str | None) -> None:
        """Count a request of `client`; raises ClientBusy (an EngineBusy) past its quota.
        Also called, with release, by app/engine/regex_compiler.py without the engine's
        lock: the count must be safe across threads on its own."""
        ...

    def release(self, client: str | None) -> None: ...

    def row_taken(self, holder: object) -> None: ...

    def row_freed(self, holder: object) -> None: ...

    def shares(self) -> RowShares:
        """A new fair share of one lane's decoding rows."""
        ...

    # Not asked by the engine itself: the early 429 and the streams' pacing read the same
    # counts through the engine that holds them (service.engine.clients).
    def full(self, client: str) -> bool: ...

    def chunk_interval(self, client: str | None = None) -> float: ...
