"""app/http/metrics.py: /metrics in Prometheus' text format, counting what the app did."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.engine.service import ModelService
from app.http.metrics import Metrics

pytestmark = pytest.mark.anyio


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_requests_errors_and_latency_by_route(client: httpx.AsyncClient) -> None:
    await client.post("/generate", json={"length": 5})
    await client.post("/generate", json={"length": -1})  # 422
    await client.get("/no/such/page")
    await client.get("/static/app.js")
    await client.post("/generate/stream", json={"length": 5})
    await client.post("/generate", content=b" " * 70_000)  # 413 before routing: still named
    samples = await scrape(client)
    ok = {"method": "POST", "route": "/generate"}
    assert value(samples, "charrnn_http_requests_total", status="200", **ok) == 1
    assert value(samples, "charrnn_http_requests_total", status="422", **ok) == 1
    assert value(samples, "charrnn_http_requests_total", status="413", **ok) == 1
    assert value(samples, "charrnn_http_errors_total", kind="client", **ok) == 2
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(samples, "charrnn_http_requests_total", **unmatched) == 1
    static = {"method": "GET", "route": "/static", "status": "200"}
    assert value(samples, "charrnn_http_requests_total", **static) == 1
    assert value(samples, "charrnn_http_request_duration_seconds_count", **ok) == 3
    stream = {"route": "/generate/stream"}
    assert value(samples, "charrnn_time_to_first_char_seconds_count", **stream) == 1
    assert value(samples, "charrnn_time_to_first_char_seconds_count", route="/generate") == 0


async def test_engine_counters_are_read_at_scrape_time(
    client: httpx.AsyncClient, service: ModelService
) -> None:
    before = await scrape(client)
    await client.post("/generate", json={"length": 25})
    after = await scrape(client)
    grown = value(after, "charrnn_chars_generated_total") - value(
        before, "charrnn_chars_generated_total"
    )
    assert grown == 25
    assert value(after, "charrnn_decode_steps_total") == service.engine.steps
    assert value(after, "charrnn_active_streams") == 0
    assert value(after, "charrnn_queue_depth") == 0
    assert ("charrnn_generations_failed_total", frozenset()) in after


def test_each_app_has_its_own_registry() -> None:
    # No process-wide registry: two apps (or two tests) never share or clash on metrics.
    first, second = Metrics(lambda: None), Metrics(lambda: None)
    first.observe("GET", "/x", 200, 0.1)
    assert b'route="/x"' in first.render() and b'route="/x"' not in second.render()
    assert b"charrnn_active_streams 0.0" in second.render()  # no model loaded yet
