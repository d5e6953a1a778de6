"""Prometheus metrics, served at GET /metrics; one registry per app (no process globals).

    charrnn_http_requests_total{method,route,status}        every response
    charrnn_http_errors_total{method,route,kind}            kind: client (4xx) or server (5xx)
    charrnn_http_request_duration_seconds{method,route}     to the last byte (streams: whole)
    charrnn_time_to_first_char_seconds{route}               event streams: request → first text
    charrnn_active_streams, charrnn_queue_depth             the engine, read at scrape time
    charrnn_chars_generated_total, charrnn_decode_steps_total, charrnn_generations_failed_total

Every label takes values from a fixed set, so no client can grow the exposition (each new
label value costs ~20 series of the histogram): `method` is one of METHODS or "other",
`route` the template of the route that served the request (/generate/stream, /static for
the mounted files, /v1/models/{model}), never the raw path. A request that matched a route
keeps its template whatever its outcome (401, 405, 413, 422); what no route matched (404s,
slash redirects, CORS preflights) counts as "unmatched".

GET /metrics renders in a worker thread, one scrape at a time, so a scrape never holds up
the event loop that serves the streams and /health.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.engine.engine import DecodingEngine
from app.gate.hang_up import unanswered_status

CONTENT_TYPE = CONTENT_TYPE_LATEST
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FIRST_CHAR_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# HTTP's common methods keep their name in the `method` label; any other token a client
# sends (servers accept any) counts as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

router = APIRouter()


class EngineCollector:
    """The decoding engine's counters and gauges, read when Prometheus scrapes."""

    def __init__(self, engine: Callable[[], DecodingEngine | None]):
        self._engine = engine  # None while the model is not loaded

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        active = queued = chars = steps = failed = 0
        if engine is not None:
            active, queued = engine.active, engine.queued
            chars, steps, failed = engine.chars_generated, engine.steps, engine.jobs_failed
        yield GaugeMetricFamily("charrnn_active_streams", "requests being decoded", active)
        yield GaugeMetricFamily("charrnn_queue_depth", "requests waiting for a row", queued)
        yield CounterMetricFamily("charrnn_chars_generated", "characters sampled", chars)
        yield CounterMetricFamily("charrnn_decode_steps", "batched decoding steps", steps)
        yield CounterMetricFamily(
            "charrnn_generations_failed", "generations ended by an error", failed
        )


class Metrics:
    def __init__(self, engine: Callable[[], DecodingEngine | None]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "charrnn_http_requests",
            "HTTP responses",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "charrnn_http_errors",
            "HTTP error responses (unhandled exceptions count as server errors)",
            ["method", "route", "kind"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "charrnn_http_request_duration_seconds",
            "from the request to the last byte of its response",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.first_char = Histogram(
            "charrnn_time_to_first_char_seconds",
            "event streams: from the request to its first event (queue and prime included)",
            ["route"],
            buckets=FIRST_CHAR_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engine))
        # Scrapes queue for this one thread rather than take the shared pool's threads.
        self._render_limiter = anyio.CapacityLimiter(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def render_off_loop(self) -> bytes:
        """`render()` in a worker thread: the event loop keeps serving meanwhile."""
        return await anyio.to_thread.run_sync(self.render, limiter=self._render_limiter)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method_label(method)
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)
        if status >= 400:
            kind = "server" if status >= 500 else "client"
            self.errors.labels(method, route, kind).inc()


class MetricsMiddleware:
    """Counts and times every HTTP request, and the first event of each event stream."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None  # none sent: app/gate/hang_up.py's unanswered_status
        failed = True
        streaming = False
        first_seen = False

        async def timed_send(message: Message) -> None:
            nonlocal status, streaming, first_seen
            if message["type"] == "http.response.start":
                status = message["status"]
                streaming = any(
                    name == b"content-type" and value.startswith(b"text/event-stream")
                    for name, value in message.get("headers", [])
                )
            elif streaming and not first_seen:
                body = message.get("body", b"")
                if body and not body.startswith(b":"):  # not a keep-alive comment
                    first_seen = True
                    route = route_of(scope)  # set by routing by now
                    self.metrics.first_char.labels(route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
            failed = False
        finally:
            elapsed = time.perf_counter() - started
            if status is None:
                status = unanswered_status(failed)
            self.metrics.observe(scope["method"], route_of(scope), status, elapsed)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics; public, like /health: counts only, no prompt or text."""
    metrics: Metrics = request.app.state.metrics
    return Response(await metrics.render_off_loop(), media_type=CONTENT_TYPE)


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def route_of(scope: Scope) -> str:
    """The template of the route that served the request (routing records it in scope)."""
    route = getattr(scope.get("route"), "path", None)
    if route is None and "endpoint" in scope:  # a mount (/static): the prefix it took
        route = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    return route or "unmatched"
