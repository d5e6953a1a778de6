"""The scale-out setup carrying real traffic: Debian's nginx, running the project's own
deploy/nginx.conf, in front of two `python -m app` replicas on loopback ports, configured
as docker-compose.scale.yml configures them (tests/deploy/support.py).

Everything lives in tmp_path: the replicas' checkpoints (two copies of one tiny untrained
model, so both serve the model `tiny`), nginx's main file (pid, logs and temp paths there,
`daemon off`, started as a subprocess) and the two files deploy/nginx.conf includes (where
the replicas are, where to listen). Each replica's access log (one JSON line per request on
its stdout) tells which one served a request.

Replica a takes one request at a time (MAX_ACTIVE=1, MAX_QUEUE=0: a 503 past that), so a
test can fill it. The tests share one cluster and run in file order: the last one kills a
replica. Without nginx they skip, saying why, and fail under CI=true (tests/tools.py).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.support import FAIL_TIMEOUT, MODEL, Cluster, cluster, make_checkpoint

# A stream of LONG characters lasts over a second, and a proxy that buffers shows as a few
# big pieces instead of many small ones.
LONG = 20000
PER_CLIENT = 128  # deploy/nginx.conf's limit_conn: requests in progress from one address
FLOOD, OTHER = "127.0.0.3", "127.0.0.4"  # client addresses of the connection-limit test


@pytest.fixture(scope="module")
def scaleout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("scaleout")
    checkpoint = make_checkpoint(base / f"{MODEL}.safetensors")
    replicas = [{"MAX_ACTIVE": "1", "MAX_QUEUE": "0"}, {}]
    with cluster(base, checkpoint, replicas, max_length=LONG) as running:
        yield running


def stream(url: str, length: int) -> tuple[list[tuple[float, int]], list[tuple[str, object]]]:
    """POST /generate/stream: (seconds since the request, bytes) of each piece as it came
    off the socket, and the events."""
    pieces, body = [], b""
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{url}/generate/stream", json={"length": length, "seed": 1}, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for piece in response.iter_bytes():  # as they come off the socket, decoded
            pieces.append((time.monotonic() - started, len(piece)))
            body += piece
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return pieces, events


def test_events_pass_through_unbuffered(scaleout):
    pieces, events = stream(scaleout.url, LONG)
    assert events[-1][0] == "done", events[-1]
    assert len("".join(data for name, data in events if name == "chars")) == LONG
    stats = events[-1][1]["stats"]
    generating = stats["seconds"] - stats["first_char_seconds"]
    assert generating > 0.5, f"too short to tell: {generating:.2f} s"
    # Each event reaches the client as it is made: about one piece off the socket per event
    # (a buffering proxy sends a few buffers of kilobytes instead), and the first one while
    # the replica is still early in the stream.
    assert len(pieces) >= max(10, len(events) // 2), (len(pieces), len(events))
    first_seconds, first_bytes = pieces[0]
    assert first_seconds < stats["first_char_seconds"] + generating / 4, (first_seconds, stats)
    assert first_bytes < 4096, f"the first piece already held {first_bytes} bytes"


def test_requests_spread_over_both_replicas(scaleout):
    before = [replica.served("/generate") for replica in scaleout.replicas]
    with httpx.Client(base_url=scaleout.url, timeout=30) as client:
        for _ in range(8):
            response = client.post("/generate", json={"prime": "a", "length": 20})
            assert response.status_code == 200, response.text
            assert response.json()["stats"]["model"] == MODEL
    time.sleep(0.2)  # each replica writes its log line once the response has ended
    served = [r.served("/generate") - b for r, b in zip(scaleout.replicas, before, strict=True)]
    assert sum(served) == 8 and min(served) >= 2, served


def test_a_score_body_past_64k_reaches_the_service(scaleout):
    text = "the cat sat. " * 20_000  # 260 kB: past the other routes' 64 kB
    with httpx.Client(base_url=scaleout.url, timeout=120) as client:
        scored = client.post("/score", json={"text": text[:100_000]})
        assert scored.status_code == 200, scored.text[:200]
        assert len(scored.json()["logprobs"]) == 100_000
        generate = client.post("/generate", json={"prime": text, "length": 1})
        assert generate.status_code == 413  # nginx's own limit for every other route


def test_openai_completions_through_the_balancer(scaleout):
    with httpx.Client(base_url=scaleout.url, timeout=30) as client:
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == [MODEL]
        body = {"model": MODEL, "prompt": "the ", "max_tokens": 30, "seed": 7}
        completion = client.post("/v1/completions", json=body)
        assert completion.status_code == 200, completion.text
        assert len(completion.json()["choices"][0]["text"]) == 30
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as chunks:
            assert chunks.status_code == 200
            lines = [line for line in chunks.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        streamed = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
        # The same seed gives the same text on either replica: they serve one model.
        assert streamed == completion.json()["choices"][0]["text"]


def test_one_address_past_its_connection_limit_is_refused_by_nginx(scaleout):
    """PER_CLIENT requests in progress from one address (heads sent, bodies not yet: nginx
    holds them without asking a replica); the next one from that address gets nginx's own
    429, and another address is served as usual."""
    held: list[socket.socket] = []
    head = (
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 40\r\n\r\n"
    )
    port = int(scaleout.url.rsplit(":", 1)[1])
    before = sum(replica.served("/generate") for replica in scaleout.replicas)
    try:
        for _ in range(PER_CLIENT):
            connection = socket.create_connection(("127.0.0.1", port), source_address=(FLOOD, 0))
            connection.sendall(head)
            held.append(connection)
        time.sleep(0.5)  # nginx has read every head
        with httpx.Client(transport=httpx.HTTPTransport(local_address=FLOOD)) as client:
            refused = client.post(f"{scaleout.url}/generate", json={"length": 5}, timeout=10)
        assert refused.status_code == 429 and "nginx" in refused.text, refused.text
        with httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER)) as client:
            served = client.post(f"{scaleout.url}/generate", json={"length": 5}, timeout=30)
        assert served.status_code == 200, served.text
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.2)  # each replica writes its log line once the response has ended
    # Only the other address's request reached a replica.
    assert sum(replica.served("/generate") for replica in scaleout.replicas) == before + 1


def test_a_full_replica_hands_its_requests_to_the_other(scaleout):
    """With replica a held by a long stream sent to it directly (so nginx's connection
    counts do not show it), the requests nginx sends its way meet a 503: nginx takes them
    to b instead, and every one succeeds."""
    full, _ = scaleout.replicas
    with httpx.stream(
        "POST", f"http://127.0.0.1:{full.port}/generate/stream", json={"length": LONG}
    ) as holding:
        assert holding.status_code == 200
        # The stream runs: a's one row is taken. (Keep the iterator: a dropped one closes
        # the response.)
        pieces = holding.iter_bytes()
        next(pieces)
        direct = httpx.post(f"http://127.0.0.1:{full.port}/generate", json={"length": 5})
        assert direct.status_code == 503, direct.text
        refused_before = full.served("/generate", 503)
        with httpx.Client(base_url=scaleout.url, timeout=30) as client:
            statuses = [
                client.post("/generate", json={"prime": "c", "length": 10}).status_code
                for _ in range(6)
            ]
    assert statuses == [200] * 6
    time.sleep(0.2)  # each replica writes its log line once the response has ended
    assert full.served("/generate", 503) > refused_before, "nginx never tried the full one"


def test_killing_a_replica_mid_run_loses_no_new_request(scaleout):
    """Requests run back to back while one replica is killed (SIGKILL: no draining, its
    connections just die): every request sent after the kill succeeds."""
    results: list[tuple[float, int, str]] = []  # (start time, status, error)
    stopping = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=scaleout.url, timeout=30) as client:
            while not stopping.is_set() and len(results) < 2000:
                started = time.monotonic()
                try:
                    response = client.post("/generate", json={"prime": "b", "length": 10})
                    results.append((started, response.status_code, ""))
                except httpx.HTTPError as error:
                    results.append((started, 0, repr(error)))

    replicas = scaleout.replicas
    before = [replica.served("/generate") for replica in replicas]
    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        # Both replicas carry this traffic before one of them dies.
        deadline = time.monotonic() + 10
        while not all(r.served("/generate") > b for r, b in zip(replicas, before, strict=True)):
            assert time.monotonic() < deadline, "the traffic did not reach both replicas"
            time.sleep(0.05)
        victim = replicas[1]
        victim.process.kill()
        victim.process.wait(10)
        killed_at = time.monotonic()
        # Past FAIL_TIMEOUT: nginx sends a request to the dead replica again, which must be
        # retried on the live one like the first ones were.
        time.sleep(FAIL_TIMEOUT + 1)
    finally:
        stopping.set()
        sender.join(30)
    after = [result for result in results if result[0] > killed_at]
    assert len(after) >= 10, f"only {len(after)} requests after the kill"
    failed = [result for result in after if result[1] != 200]
    assert not failed, failed[:3]
