"""One client identity behind the project's own balancer: Debian's nginx running
deploy/nginx.conf, reaching the replicas from its own address (127.0.0.2, as the balancer's
container does on the compose network), and `python -m app` replicas configured as
docker-compose.scale.yml configures them (tests/deploy/support.py). Clients come from
127.0.0.3, .4, ...: each must be a client of its own at the replica, for its quota
(MAX_REQUESTS_PER_CLIENT), its fair share of the decoding steps and the access log, however
it fills in X-Forwarded-For.

nginx also runs docs/deployment.md's realip recipe for a proxy in front of it, with
127.0.0.5 as that proxy: a client behind it keeps its own identity too.

A second replica trusts a network (FORWARDED_ALLOW_IPS=127.0.0.2/31): nginx inside it is
believed, and a peer outside it that connects straight to the replica keeps its own
connection cap and early 429.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.support import (
    BALANCER,
    MODEL,
    ROOT,
    Cluster,
    client_from,
    cluster,
    make_checkpoint,
)

QUOTA = 4  # MAX_REQUESTS_PER_CLIENT of the compose-configured replica
ENDLESS = 10**6  # characters of a stream that runs until its client hangs up
WINDOW = 2.0  # seconds over which the fair-share test counts characters
FRONT = "127.0.0.5"  # a proxy in front of nginx (a cloud balancer, a CDN)


def realip_recipe() -> str:
    """docs/deployment.md's realip lines for a proxy in front of nginx, for FRONT."""
    docs = (ROOT / "docs" / "deployment.md").read_text()
    section = docs.split("### A proxy in front of nginx", 1)[1]
    recipe = section.split("```nginx\n", 1)[1].split("```", 1)[0]
    assert "set_real_ip_from 10.0.0.0/8;" in recipe, recipe
    return recipe.replace("10.0.0.0/8", FRONT)


@pytest.fixture(scope="module")
def compose_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """nginx in front of one replica: the compose file's settings, a small quota and a
    small fair-share floor (FAIR_SHARE_ROWS=2: with two clients, each may step one row)."""
    base = tmp_path_factory.mktemp("identity")
    checkpoint = make_checkpoint(base / f"{MODEL}.safetensors")
    settings = {
        "MAX_REQUESTS_PER_CLIENT": str(QUOTA),
        "FAIR_SHARE_ROWS": "2",
        "QUOTA_REFUSAL_DELAY_SECONDS": "0",
    }
    with cluster(base, checkpoint, [settings], ENDLESS, realip_recipe()) as running:
        yield running


@pytest.fixture(scope="module")
def cidr_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """nginx in front of one replica that trusts 127.0.0.2/31 (nginx and 127.0.0.3), with
    room for two connections and one request per client."""
    base = tmp_path_factory.mktemp("cidr")
    checkpoint = make_checkpoint(base / f"{MODEL}.safetensors")
    settings = {
        "FORWARDED_ALLOW_IPS": f"{BALANCER}/31",
        "MAX_CONNECTIONS_PER_CLIENT": "2",
        "MAX_REQUESTS_PER_CLIENT": "1",
        "QUOTA_REFUSAL_DELAY_SECONDS": "0",
        "HEADER_TIMEOUT_SECONDS": "10",
    }
    with cluster(base, checkpoint, [settings], max_length=ENDLESS) as running:
        yield running


@contextlib.contextmanager
def holding(url: str, address: str, count: int) -> Iterator[None]:
    """`count` endless streams from `address`, each running (its first bytes read), until
    the block ends and they hang up."""
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            client = stack.enter_context(client_from(address, timeout=30))
            response = stack.enter_context(
                client.stream("POST", f"{url}/generate/stream", json={"length": ENDLESS})
            )
            assert response.status_code == 200, response.read()
            pieces = response.iter_bytes()
            next(pieces)
            stack.callback(pieces.close)  # a dropped iterator would close the stream
        yield


def generate(url: str, address: str, **headers: str) -> httpx.Response:
    with client_from(address, timeout=30) as client:
        return client.post(f"{url}/generate", json={"length": 5}, headers=headers)


def logged_clients(cluster: Cluster, path: str) -> list[str]:
    """The client of each logged request for `path`, once the replica has logged them."""
    time.sleep(0.3)  # a replica writes its line once the response has ended
    return [e["client"] for r in cluster.replicas for e in r.entries() if e["path"] == path]


def test_two_clients_get_separate_quotas(compose_cluster: Cluster) -> None:
    """127.0.0.3 holds its QUOTA of streams: its next request gets 429, while 127.0.0.4's
    is served; the replica logs each under its own address, never nginx's."""
    url = compose_cluster.url
    before = len(logged_clients(compose_cluster, "/generate"))
    with holding(url, "127.0.0.3", QUOTA):
        refused = generate(url, "127.0.0.3")
        assert refused.status_code == 429, refused.text
        assert f"already has {QUOTA} requests" in refused.json()["detail"]
        served = generate(url, "127.0.0.4")
        assert served.status_code == 200, served.text
    assert logged_clients(compose_cluster, "/generate")[before:] == ["127.0.0.3", "127.0.0.4"]
    assert BALANCER not in logged_clients(compose_cluster, "/generate/stream")


def test_a_client_cannot_take_another_ones_identity(compose_cluster: Cluster) -> None:
    """A client writes X-Forwarded-For itself: nginx appends the address it came from, and
    the replica believes only that. 127.0.0.4, at its quota, stays at it whatever it names;
    127.0.0.3 naming 127.0.0.4 is served as itself."""
    url = compose_cluster.url
    before = len(logged_clients(compose_cluster, "/generate"))
    with holding(url, "127.0.0.4", QUOTA):
        for named in ("127.0.0.3", "10.9.9.9, 127.0.0.3", "127.0.0.2", "nonsense", "*"):
            refused = generate(url, "127.0.0.4", **{"X-Forwarded-For": named})
            assert refused.status_code == 429, (named, refused.text)
        served = generate(url, "127.0.0.3", **{"X-Forwarded-For": "127.0.0.4"})
        assert served.status_code == 200, served.text
    logged = logged_clients(compose_cluster, "/generate")[before:]
    assert logged == ["127.0.0.4"] * 5 + ["127.0.0.3"]


def test_a_client_behind_a_proxy_in_front_of_nginx_keeps_its_identity(
    compose_cluster: Cluster,
) -> None:
    """With the realip recipe, nginx takes the client from FRONT's X-Forwarded-For (the
    rightmost entry that is not FRONT) and passes it on: the replica counts 203.0.113.7,
    whatever that client wrote itself. A client nginx sees directly (127.0.0.3) cannot use
    the header to be someone else."""
    url = compose_cluster.url
    before = len(logged_clients(compose_cluster, "/generate"))
    sent = [
        (FRONT, "203.0.113.7"),
        (FRONT, "6.6.6.6, 203.0.113.7"),
        (FRONT, f"203.0.113.8, {FRONT}"),
        ("127.0.0.3", "203.0.113.7"),
    ]
    for source, forwarded in sent:
        response = generate(url, source, **{"X-Forwarded-For": forwarded})
        assert response.status_code == 200, response.text
    logged = logged_clients(compose_cluster, "/generate")[before:]
    assert logged == ["203.0.113.7", "203.0.113.7", "203.0.113.8", "127.0.0.3"]


def chars_over_time(url: str, address: str, until: float, out: list[tuple[float, int]]) -> None:
    """Read an endless stream from `address` until `until`, noting (time, characters) of
    each `chars` event in `out`."""
    with (
        client_from(address, timeout=30) as client,
        client.stream("POST", f"{url}/generate/stream", json={"length": ENDLESS}) as response,
    ):
        assert response.status_code == 200
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "chars":
                out.append((time.monotonic(), len(json.loads(line[6:]))))
            if time.monotonic() > until:
                return


def test_two_clients_get_fair_shares(compose_cluster: Cluster) -> None:
    """127.0.0.3 with three streams and 127.0.0.4 with one, on one replica: each client may
    step one row a step (FAIR_SHARE_ROWS=2 between two clients), so 127.0.0.4's stream gets
    about three times the characters of each of 127.0.0.3's. As one client (all of them
    nginx's), every row would step every time, at one pace."""
    url = compose_cluster.url
    until = time.monotonic() + WINDOW + 2.0
    readings: list[list[tuple[float, int]]] = [[] for _ in range(4)]
    sources = ["127.0.0.3"] * 3 + ["127.0.0.4"]
    threads = [
        threading.Thread(target=chars_over_time, args=(url, source, until, out))
        for source, out in zip(sources, readings, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WINDOW + 30)
    assert all(readings), "a stream sent nothing"
    # Counted from when all four run, so each client's streams are compared over one span.
    start = max(out[0][0] for out in readings) + 0.3
    counts = [sum(n for at, n in out if start <= at <= start + WINDOW) for out in readings]
    *crowd, alone = counts
    assert min(crowd) > 0, counts
    assert alone > 2 * max(crowd), counts


def test_a_peer_outside_a_trusted_network_keeps_its_limits(cidr_cluster: Cluster) -> None:
    """FORWARDED_ALLOW_IPS=127.0.0.2/31. Through nginx (inside it), 127.0.0.4 runs its one
    request, and 127.0.0.5 and .6 are served beside it over more connections than a client
    may have. Straight to the replica, 127.0.0.4 (outside the network) is the same client:
    its request line alone gets the early 429, and its third connection is closed."""
    url = cidr_cluster.url
    replica = cidr_cluster.replicas[0]
    direct = ("127.0.0.1", replica.port)
    with holding(url, "127.0.0.4", 1), holding(url, "127.0.0.5", 1):
        assert generate(url, "127.0.0.6").status_code == 200  # nginx's third connection
        with socket.create_connection(direct, source_address=("127.0.0.4", 0)) as sock:
            sock.sendall(b"POST /generate HTTP/1.1\r\n")  # no headers: only an early answer
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 429"), answer
        idle = [socket.create_connection(direct, source_address=("127.0.0.4", 0)) for _ in "ab"]
        try:
            with socket.create_connection(direct, source_address=("127.0.0.4", 0)) as third:
                started = time.monotonic()
                assert read_until_closed(third) == b""
                assert time.monotonic() - started < 1.0, "the third connection was kept"
        finally:
            for sock in idle:
                sock.close()
    clients = logged_clients(cidr_cluster, "/generate/stream")
    assert {"127.0.0.4", "127.0.0.5"} <= set(clients) and BALANCER not in clients


def read_until_closed(sock: socket.socket, limit: float = 3.0) -> bytes:
    """What the server sends until it closes the connection (raises if it is still open
    after `limit` seconds)."""
    sock.settimeout(limit)
    received = b""
    while data := sock.recv(65536):
        received += data
    return received
