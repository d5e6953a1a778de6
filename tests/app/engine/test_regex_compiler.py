"""app/engine/regex_compiler.py: regexes compile outside the event loop, one flight per
pattern, one compile at a time per client (clients in turn), each waiting request
holding a place of its client's quota; a cached pattern never waits. The worker is a
stand-in here whose compiles the test releases; the last tests go through the service's
HTTP API with real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from app.engine import regex_compiler
from app.engine.config import EngineConfig
from app.engine.regex_compiler import RegexBusy, RegexCompiler
from app.gate.clients import ClientBusy, ClientLedger
from model.decoding.params import ParamError
from model.decoding.regex import RegexLimits, compile_regex
from model.decoding.regex_workers import WorkerTimeout
from model.vocab import Vocabulary
from tests.app.support import until

pytestmark = pytest.mark.anyio


class Worker:
    """A stand-in for a worker process: compiles in this process, each pattern once the
    test opens its gate (patterns without a gate at once)."""

    gates: dict[str, threading.Event]
    calls: list[str]
    errors: dict[str, BaseException]

    def compile(self, pattern: str, chars: tuple[str, ...], limits: RegexLimits) -> Any:
        Worker.calls.append(pattern)
        gate = Worker.gates.get(pattern)
        if gate is not None:
            assert gate.wait(10), f"{pattern} was never let through"
        if pattern in Worker.errors:
            raise Worker.errors[pattern]
        return compile_regex(pattern, Vocabulary(chars), limits)

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Worker]]:
    Worker.gates, Worker.calls, Worker.errors = {}, [], {}
    monkeypatch.setattr(regex_compiler, "RegexWorker", Worker)
    yield Worker
    for gate in Worker.gates.values():
        gate.set()


def gated(*patterns: str) -> None:
    for pattern in patterns:
        Worker.gates[pattern] = threading.Event()


def let_through(*patterns: str) -> None:
    for pattern in patterns:
        Worker.gates[pattern].set()


@pytest.fixture
def ledger() -> ClientLedger:
    return ClientLedger(EngineConfig(max_requests_per_client=3))


@pytest.fixture
async def compiler(vocab: Vocabulary, ledger: ClientLedger) -> AsyncIterator[RegexCompiler]:
    compiler = RegexCompiler(vocab, RegexLimits(compile_workers=2), ledger)
    yield compiler
    compiler.close()


async def test_a_cached_pattern_never_waits_for_a_compile(compiler, worker):
    cached = await compiler.automaton("[ab]+", "A")
    gated("(ab)+c")
    slow = asyncio.create_task(compiler.automaton("(ab)+c", "A"))
    await until(lambda: worker.calls[-1:] == ["(ab)+c"])
    for client in ("A", "B", None):  # the compiling client too
        assert await asyncio.wait_for(compiler.automaton("[ab]+", client), 0.5) is cached
    assert not slow.done()
    let_through("(ab)+c")
    assert (await slow).final.any()


async def test_one_flight_per_pattern(compiler, worker):
    gated("a+b")
    waiting = [asyncio.create_task(compiler.automaton("a+b", client)) for client in "ABCA"]
    await until(lambda: worker.calls == ["a+b"])
    let_through("a+b")
    results = await asyncio.gather(*waiting)
    assert worker.calls == ["a+b"] and all(result is results[0] for result in results)
    assert await compiler.automaton("a+b", "D") is results[0]  # cached since


async def test_another_clients_pattern_does_not_wait_for_one_clients_compiles(
    compiler, worker, ledger
):
    slow = [f"a{{{n}}}" for n in range(3, 6)]
    gated(*slow)
    flood = [asyncio.create_task(compiler.automaton(pattern, "A")) for pattern in slow]
    await until(lambda: len(worker.calls) == 1)
    started = time.monotonic()
    assert (await asyncio.wait_for(compiler.automaton("b+", "B"), 2)).final.any()
    assert time.monotonic() - started < 1
    assert compiler.compiling == 1 and len(worker.calls) == 2  # A: one at a time
    assert ledger.full("A")  # A's three waiting requests hold its three places
    let_through(*slow)
    await asyncio.gather(*flood)
    assert not ledger.full("A") and not ledger._requests  # every place given back


async def test_clients_take_turns(vocab, worker):
    compiler = RegexCompiler(vocab, RegexLimits(compile_workers=1))
    patterns = {"A": ["ab", "ac", "ad"], "B": ["ba", "bb"]}
    gated("ab")
    tasks = [asyncio.create_task(compiler.automaton("ab", "A"))]
    await until(lambda: worker.calls == ["ab"])
    for client in "AB":
        for pattern in patterns[client]:
            if pattern != "ab":
                tasks.append(asyncio.create_task(compiler.automaton(pattern, client)))
    await asyncio.sleep(0.01)
    let_through("ab")
    await asyncio.gather(*tasks)
    assert worker.calls == ["ab", "ba", "ac", "bb", "ad"]
    compiler.close()


async def test_a_pattern_queued_by_another_client_starts_at_the_first_turn(vocab, worker):
    """A client cannot hold back another's pattern by queueing it behind its own."""
    compiler = RegexCompiler(vocab, RegexLimits(compile_workers=1))
    gated("ab")
    tasks = [asyncio.create_task(compiler.automaton(p, "A")) for p in ["ab", "ac", "ad", "b+"]]
    await until(lambda: worker.calls == ["ab"])
    tasks.append(asyncio.create_task(compiler.automaton("b+", "B")))
    await asyncio.sleep(0.01)
    let_through("ab")
    await asyncio.gather(*tasks)
    assert worker.calls == ["ab", "b+", "ac", "ad"]
    compiler.close()


async def test_a_compile_counts_against_the_quota(compiler, worker, ledger):
    patterns = ["xa+", "xb+", "xc+"]
    gated(*patterns)
    waiting = [asyncio.create_task(compiler.automaton(p, "A")) for p in patterns]
    await until(lambda: len(worker.calls) == 1)
    await asyncio.sleep(0.01)
    with pytest.raises(ClientBusy, match="3 requests"):
        await compiler.automaton("xd+", "A")
    assert "xd+" not in worker.calls
    assert (await compiler.automaton("y+", "B")).final.any()  # B has its own places
    let_through(*patterns)
    await asyncio.gather(*waiting)
    assert (await compiler.automaton("xd+", "A")).final.any()
    assert not ledger._requests


async def test_a_queued_compile_nobody_waits_for_is_dropped(vocab, worker, ledger):
    compiler = RegexCompiler(vocab, RegexLimits(compile_workers=1), ledger)
    gated("ab")
    running = asyncio.create_task(compiler.automaton("ab", "A"))
    await until(lambda: worker.calls == ["ab"])
    queued = asyncio.create_task(compiler.automaton("ac", "A"))
    shared = [asyncio.create_task(compiler.automaton("ad", client)) for client in "AB"]
    await asyncio.sleep(0.01)
    queued.cancel()  # its client hung up
    shared[0].cancel()  # one of two waiting for a3: a3 still compiles for the other
    for task in (queued, shared[0]):  # both have left before the worker is free again
        with contextlib.suppress(asyncio.CancelledError):
            await task
    let_through("ab")
    await running
    assert (await shared[1]).final.any()
    assert worker.calls == ["ab", "ad"] and not ledger._requests
    compiler.close()


async def test_refusals_are_remembered_and_time_outs_are_not(compiler, worker):
    for _ in range(2):
        with pytest.raises(ParamError) as raised:
            await compiler.automaton("(ab", "A")
        assert raised.value.field == "regex" and raised.value.kind == "regex_invalid"
    assert worker.calls == ["(ab"]  # the second answer came from the cache
    worker.errors["a+"] = WorkerTimeout("no answer")
    with pytest.raises(RegexBusy, match="too busy"):
        await compiler.automaton("a+", "A")
    del worker.errors["a+"]
    assert (await compiler.automaton("a+", "A")).final.any()  # compiled again


async def test_length_is_checked_before_anything_is_charged(compiler, worker, ledger):
    for pattern in ["", "a" * 257]:
        with pytest.raises(ParamError) as raised:
            await compiler.automaton(pattern, "A")
        assert raised.value.kind == "string_length"
    assert worker.calls == [] and not ledger._requests


async def test_get_blocks_a_thread_never_the_event_loop(compiler, worker):
    with pytest.raises(RuntimeError, match="event loop"):
        compiler.get("ab")
    automaton = await asyncio.to_thread(compiler.get, "ab")
    assert await compiler.automaton("ab", "A") is automaton


async def test_closing_fails_the_compiles_still_queued(vocab, worker):
    compiler = RegexCompiler(vocab, RegexLimits(compile_workers=1))
    gated("ab")
    running = asyncio.create_task(compiler.automaton("ab", "A"))
    await until(lambda: worker.calls == ["ab"])
    queued = asyncio.create_task(compiler.automaton("ac", "A"))
    await asyncio.sleep(0.01)
    compiler.close()
    with pytest.raises(RuntimeError, match="closed"):
        await queued
    let_through("ab")
    assert (await running).final.any()  # the one running finished
    assert worker.calls == ["ab"]


async def test_real_workers_compile_and_close(vocab):
    compiler = RegexCompiler(vocab, RegexLimits(compile_workers=2))
    automaton = await compiler.automaton("(ab|cd)e", "A")
    assert automaton.states == compile_regex("(ab|cd)e", vocab, RegexLimits()).states
    await until(lambda: compiler.idle_workers == 2, 30)  # the second started meanwhile
    compiler.close()
    assert compiler.idle_workers == 0


# --- through the service's HTTP API, with worker processes ----------------------------------
SLOW = "(a|b)*a(a|b){%d}"  # 2^N states: refused at the compile deadline


def generate(http: httpx.AsyncClient, client: str, regex: str) -> Any:
    body = {"prime": "a", "length": 3, "regex": regex}
    return http.post("/generate", json=body, headers={"X-Forwarded-For": client})


async def test_beside_one_clients_slow_compiles_another_client_is_answered_at_once(
    regex_service,
):
    http, service = regex_service
    flood = [asyncio.create_task(generate(http, "10.0.0.1", SLOW % (20 + n))) for n in range(6)]
    await until(lambda: service.model().regexes.compiling == 1)
    started = time.monotonic()
    response = await generate(http, "10.0.0.2", "[a-z]+ ?")
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 1.0
    for refused in await asyncio.gather(*flood):
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["body", "regex"]
        assert refused.json()["detail"][0]["type"] == "regex_too_complex"


async def test_a_cached_pattern_is_served_while_its_client_compiles(regex_service):
    http, service = regex_service
    assert (await generate(http, "10.0.0.1", "[ab]+")).status_code == 200
    slow = asyncio.create_task(generate(http, "10.0.0.1", SLOW % 20))
    await until(lambda: service.model().regexes.compiling == 1)
    started = time.monotonic()
    assert (await generate(http, "10.0.0.1", "[ab]+")).status_code == 200
    assert time.monotonic() - started < 1.0 and not slow.done()
    assert (await slow).status_code == 422


async def test_a_compile_counts_against_its_clients_quota(
    regex_service, monkeypatch: pytest.MonkeyPatch
):
    http, service = regex_service
    monkeypatch.setattr(service.engine.clients, "limit", 2)
    waiting = [asyncio.create_task(generate(http, "10.0.0.1", SLOW % n)) for n in (20, 21)]
    await until(lambda: service.engine.clients.full("10.0.0.1"))
    refused = await generate(http, "10.0.0.1", "[ab]+c")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert (await generate(http, "10.0.0.2", "[ab]+c")).status_code == 200
    assert [r.status_code for r in await asyncio.gather(*waiting)] == [422, 422]
    assert not service.engine.clients.full("10.0.0.1")
