"""A text's recurrent state continues on any replica: nginx running deploy/nginx.conf in
front of two `python -m app` replicas of one checkpoint (tests/deploy/support.py), a story
told a turn at a time, each turn's state sent back through the balancer or straight to the
other replica, equal to the whole story sent as prime. Nothing of a conversation is kept
on a replica, so no sticky sessions are needed.

The model is a 2 × 256 LSTM, the shipped model's shape, so its tokens have the shipped
model's size (5,500 to 8,228 characters); one goes through nginx in a GET query string.
Without nginx these tests skip, saying why, and fail under CI=true (tests/tools.py).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.deploy.support import MODEL, Cluster, Replica, cluster, make_checkpoint

MAX_LENGTH = 4000
TURN = {"length": 200, "temperature": 0.9, "return_state": True}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("state-replicas")
    checkpoint = make_checkpoint(base / f"{MODEL}.safetensors")
    with cluster(base, checkpoint, [{}, {}], max_length=MAX_LENGTH) as running:
        yield running


def post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text[:500]
    return response.json()


def test_a_state_from_one_replica_continues_on_the_other(replicas: Cluster) -> None:
    one, other = (replica.url for replica in replicas.replicas)
    first = post(one, "/generate", {"prime": "the king ", "seed": 1, **TURN})
    story = "the king " + first["text"]
    assert 5500 <= len(first["state"]) <= 8228
    body = {"prime": " said", "seed": 2, **TURN}
    there = post(other, "/generate", {**body, "state": first["state"]})
    here = post(one, "/generate", {**body, "prime": story + " said"})
    assert there["text"] == here["text"]
    assert there["state"] == here["state"]


def test_a_story_told_through_the_balancer_equals_the_whole_story(replicas: Cluster) -> None:
    """Each turn goes through nginx to whichever replica it picks, and turns made on one
    replica are continued on the other; every turn's text and state are those of the whole
    story as one prime (asked of a replica directly, so nginx sees the turns only)."""
    story, state, makers = "", None, []
    turns = [("romeo: ", "json"), (" and", "stream"), ("", "json"), (" juliet: ", "stream")]
    turns += [(" then", "json"), ("", "json")]
    direct = replicas.replicas[0].url
    with httpx.Client(base_url=replicas.url, timeout=60) as client:
        for seed, (new, how) in enumerate(turns):
            body: dict[str, Any] = {"prime": new, "seed": seed, **TURN}
            if state is not None:
                body["state"] = state
            before = [generations(replica) for replica in replicas.replicas]
            if how == "json":
                response = client.post("/generate", json=body)
                assert response.status_code == 200, response.text[:500]
                ours = response.json()
            else:
                ours = streamed(client, body)
            makers.append(maker(replicas, before))
            whole_body = {**body, "prime": story + new}
            whole_body.pop("state", None)
            logged = generations(replicas.replicas[0])
            whole = post(direct, "/generate", whole_body)
            # Its access-log line comes once its response has ended, maybe after the
            # client has read it: wait for it, so the next turn's count starts after it.
            deadline = time.monotonic() + 5
            while generations(replicas.replicas[0]) == logged:
                assert time.monotonic() < deadline, "the direct request was not logged"
                time.sleep(0.02)
            assert ours["text"] == whole["text"]
            assert ours["state"] == whole["state"]
            story += new + ours["text"]
            state = ours["state"]
    assert len(story) > 1000
    # Some turn was made on one replica from a state the other made.
    assert any(a != b for a, b in itertools.pairwise(makers)), makers


def maker(replicas: Cluster, before: list[int]) -> int:
    """Which replica served the one generation since `before` (its access log's line is
    written once the response has ended)."""
    deadline = time.monotonic() + 5
    while True:
        grown = [generations(r) - b for r, b in zip(replicas.replicas, before, strict=True)]
        if sum(grown) == 1:
            return grown.index(1)
        assert time.monotonic() < deadline, grown
        time.sleep(0.02)


def generations(replica: Replica) -> int:
    """Generations in a replica's access log, streamed or not."""
    return replica.served("/generate") + replica.served("/generate/stream")


def streamed(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST /generate/stream: the chars joined, with the done event's fields."""
    with client.stream("POST", "/generate/stream", json=body) as response:
        assert response.status_code == 200, response.read()[:500]
        text = response.read().decode()
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    assert events[-1][0] == "done", events[-1]
    return {"text": "".join(data for name, data in events if name == "chars"), **events[-1][1]}


def test_a_full_size_state_fits_a_get_query_through_nginx(replicas: Cluster) -> None:
    """The longest token (a text past the tail's 2,048 characters) in GET /generate/stream's
    query string, which a browser's EventSource sends, passes nginx."""
    one = replicas.replicas[0].url
    first = post(one, "/generate", {**TURN, "prime": "a", "length": 2100, "seed": 3})
    assert len(first["state"]) == 8228
    query = {"state": first["state"], "prime": "b", "length": 20, "seed": 4}
    response = httpx.get(f"{replicas.url}/generate/stream", params=query, timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert "event: done" in response.text
