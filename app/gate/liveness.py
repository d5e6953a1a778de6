"""GET /livez answers past MAX_CONNECTIONS: a full server is busy, not dead.

Past MAX_CONNECTIONS open connections uvicorn answers every request with a plain 503
(its limit_concurrency), probes included: a liveness probe would then restart a replica
that is only full, with every stream on it. `LivenessSlots` gives the liveness probe
LIVENESS_SLOTS connections beyond the limit, so it fails only when the process is stuck,
while the readiness probe (GET /health) keeps the limit: a full replica leaves the
Service's endpoints and gets no new work until it has room again.

    GET /health   readiness: "send me work" (503 when full, draining or stalled)
    GET /livez    liveness: "not stuck" (503 only when the decoding engine is dead or
                  stalled; answered up to MAX_CONNECTIONS + LIVENESS_SLOTS connections)
"""

from __future__ import annotations

from typing import Any

LIVENESS_PATH = "/livez"
# Connections past MAX_CONNECTIONS that only a liveness probe may use: a probe every few
# seconds needs one; a few more cover probes that overlap while the replica is slow.
LIVENESS_SLOTS = 8


class LivenessSlots:
    """Mixed into one of uvicorn's HTTP/1.1 protocols (before it): uvicorn reads
    `limit_concurrency` once a request's head is parsed, to choose between the app and
    its 503; for GET /livez this answers the limit plus LIVENESS_SLOTS. The 503
    itself, and the limit for every other request, stay uvicorn's."""

    scope: Any  # the request being read (uvicorn's name, both protocols)
    _limit_concurrency: int | None

    @property
    def limit_concurrency(self) -> int | None:
        limit: int | None = self._limit_concurrency
        if limit is not None and self._is_liveness_probe():
            return limit + LIVENESS_SLOTS
        return limit

    @limit_concurrency.setter
    def limit_concurrency(self, value: int | None) -> None:
        self._limit_concurrency = value  # uvicorn's __init__ sets it: MAX_CONNECTIONS

    def _is_liveness_probe(self) -> bool:
        scope = getattr(self, "scope", None)  # none before the first request's head
        return (
            scope is not None
            and scope.get("path") == LIVENESS_PATH
            and scope.get("method") == "GET"
        )
