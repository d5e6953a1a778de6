"""app/gate/liveness.py and GET /livez: with MAX_CONNECTIONS taken by idle connections the
readiness check (GET /health) gets uvicorn's 503 but the liveness probe still answers,
up to LIVENESS_SLOTS more; /livez fails only when the engine is dead or stalled. Under a
real uvicorn, both stacks."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr

from app.engine.service import ModelService
from app.gate.connections import uvicorn_options
from app.gate.liveness import LIVENESS_PATH, LIVENESS_SLOTS, LivenessSlots
from app.main import create_app
from app.settings import Settings
from tests.app.support import STACKS, running_server, serve_asgi

LIMIT = 4  # MAX_CONNECTIONS of the server under test


@pytest.fixture(scope="module", params=list(STACKS))
def address(settings: Settings, request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    changed = Settings(
        **{
            **settings.model_dump(),
            **STACKS[request.param],
            "access_log": False,
            "max_connections": LIMIT,
            "header_timeout_seconds": 30.0,  # the idle connections stay for the test
        }
    )
    with running_server(create_app(changed), **uvicorn_options(changed.connection_limits())) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port


def status(address: tuple[str, int], method: str, path: str) -> int:
    """The status of one request on a new connection (then closed)."""
    with socket.create_connection(address, timeout=5) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode())
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    return int(received.split(b" ", 2)[1])


def idle_connections(address: tuple[str, int], count: int) -> list[socket.socket]:
    """`count` connections that send nothing, each counted by the server before return."""
    sockets = [socket.create_connection(address) for _ in range(count)]
    time.sleep(0.2)  # accepted: uvicorn counts a connection once it is made
    return sockets


def test_the_liveness_probe_answers_when_every_connection_is_taken(
    address: tuple[str, int],
) -> None:
    assert status(address, "GET", "/health") == 200
    flood = idle_connections(address, LIMIT)
    try:
        assert status(address, "GET", "/health") == 503  # readiness: full, send no work
        assert status(address, "GET", "/model") == 503
        assert status(address, "GET", LIVENESS_PATH) == 200  # liveness: not stuck
        assert status(address, "POST", LIVENESS_PATH) == 503  # the slots are for probes
    finally:
        for sock in flood:
            sock.close()


def test_the_reserved_slots_are_bounded(address: tuple[str, int]) -> None:
    flood = idle_connections(address, LIMIT + LIVENESS_SLOTS)
    try:
        assert status(address, "GET", LIVENESS_PATH) == 503
    finally:
        for sock in flood:
            sock.close()
    deadline = time.monotonic() + 3
    while status(address, "GET", "/health") != 200:  # until the server has seen them go
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_without_a_limit_nothing_changes() -> None:
    class Probe(LivenessSlots):
        def __init__(self, limit: int | None, path: str):
            self.limit_concurrency = limit
            self.scope = {"method": "GET", "path": path}

    assert Probe(None, LIVENESS_PATH).limit_concurrency is None
    assert Probe(10, "/health").limit_concurrency == 10
    assert Probe(10, LIVENESS_PATH).limit_concurrency == 10 + LIVENESS_SLOTS


@pytest.mark.anyio
async def test_livez_fails_only_for_a_stuck_engine(
    settings: Settings, service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    application = create_app(settings, service)
    async with serve_asgi(application) as http:
        assert (await http.get(LIVENESS_PATH)).json() == {"status": "alive"}
        application.state.draining = True  # shutting down is not stuck
        assert (await http.get(LIVENESS_PATH)).status_code == 200
        assert (await http.get("/health")).status_code == 503
        application.state.draining = False
        monkeypatch.setattr(service, "engine_problem", lambda: "the decoding engine is not running")
        dead = await http.get(LIVENESS_PATH)
        assert dead.status_code == 503 and "not running" in dead.json()["detail"]


def test_livez_needs_no_api_key(settings: Settings, service: ModelService) -> None:
    application = create_app(settings.model_copy(update={"api_key": SecretStr("k")}), service)
    with running_server(application) as url:
        assert httpx.get(f"{url}{LIVENESS_PATH}").status_code == 200
        assert httpx.get(f"{url}/model").status_code == 401


def test_the_manifest_probes_liveness_on_livez_and_readiness_on_health() -> None:
    yaml = pytest.importorskip("yaml")  # a dev extra: not in `make test-lowest`
    manifest = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes.yaml"
    deployment = next(
        d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == LIVENESS_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
