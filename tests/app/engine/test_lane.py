"""app/engine/lane.py: which rows a step advances (the fair shares, and the pass that skips them
while nothing changed), and a job woken at its end however its waiter arrived."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from app.engine.config import EngineConfig
from app.engine.engine import DecodingEngine
from app.engine.jobs import Job
from app.engine.lane import Lane
from app.engine.steps import prefill
from app.gate.clients import ClientLedger
from app.gate.fairness import PrimeCredit
from model.config import ModelConfig
from model.decoding.params import GenerationParams
from model.network import CharRNN
from model.vocab import Vocabulary

VOCAB = Vocabulary.from_text("abcdefghijklmnopqrstuvwxyz .,\n")


@pytest.fixture
def lane() -> Lane:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(VOCAB), hidden_size=16)).eval()
    config = EngineConfig(max_active=8, decode_threads=1, fair_share_rows=4)
    engine = DecodingEngine(config, ClientLedger(config))
    return engine.add_lane("tiny", model, VOCAB.chars)


def admit(lane: Lane, client: str, seed: int) -> Job:
    params = GenerationParams(prime=tuple(VOCAB.encode("the ")), length=1000, seed=seed)
    job = Job(params, lane.chars, lane.name, client)
    lane.admit(job)
    while lane.decoder.prefilling:
        lane.prefill_slice(8)
    return job


def test_clients_within_their_shares_step_every_row_without_a_fair_share_pass(
    lane: Lane, monkeypatch: pytest.MonkeyPatch
) -> None:
    for seed, client in enumerate(["a", "b", "c"]):
        admit(lane, client, seed)
    first = lane.plan()
    assert first is lane.decoder.decoding and len(first) == 3

    def no_pass(*args: object) -> None:
        raise AssertionError("the fair-share pass ran again with nothing changed")

    monkeypatch.setattr(lane.fair, "rows", no_pass)
    assert lane.plan() is first
    monkeypatch.undo()
    admit(lane, "d", 3)  # a new row: a new decoding array, so a new pass
    assert lane.plan().tolist() == lane.decoder.decoding.tolist() and len(lane.plan()) == 4


def test_a_client_over_its_share_takes_turns_at_every_step(lane: Lane) -> None:
    for seed in range(4):
        admit(lane, "heavy", seed)
    admit(lane, "light", 9)  # heavy's share: the floor, ceil(4 rows / 2 clients) = 2
    plans = [lane.plan().tolist() for _ in range(4)]
    assert all(len(plan) == 3 and 4 in plan for plan in plans)  # light steps every time
    assert len({tuple(plan) for plan in plans}) > 1  # heavy's rows rotate: no stale plan
    lane.remove(0)
    lane.remove(1)  # heavy is within its share again (2 of 2 rows): every row steps
    assert lane.plan().tolist() == [2, 3, 4]
    assert lane.plan() is lane.decoder.decoding


def test_a_waiter_that_arrives_after_the_last_step_is_woken_by_the_end(lane: Lane) -> None:
    job = admit(lane, "a", 0)
    lane.step()  # a per-step wake with nobody waiting: nothing to do

    async def wait_for_the_end() -> bool:
        event = asyncio.Event()
        job._waiter = (asyncio.get_running_loop(), event)
        lane.remove(int(lane.decoder.decoding[0]))  # the end: its wake takes the lock
        await asyncio.wait_for(event.wait(), 2)
        return job.done

    assert asyncio.run(wait_for_the_end())


def test_prefill_reads_only_the_primes_of_clients_with_credit_and_charges_them(
    lane: Lane,
) -> None:
    credit = PrimeCredit(burst=3, rate=1.0, clock=lambda: 0.0)  # no refill: time stands
    prime = tuple(VOCAB.encode("abcdefghij"))
    jobs = {}
    for seed, client in enumerate(["heavy", "heavy", "light"]):
        jobs[seed] = Job(
            GenerationParams(prime=prime, length=5, seed=seed), lane.chars, "t", client
        )
        lane.admit(jobs[seed])
    read = lane.decoder._prime_pos
    assert lane.prefill_slice(8, credit) == 3  # heavy 3 - 2 = 1 left, light 2
    assert lane.prefill_slice(8, credit) == 3  # heavy 1 - 2 = -1 (a slice can overdraw)
    assert lane.prefill_slice(8, credit) == 1  # light alone: 0 left
    assert read[:3].tolist() == [2, 2, 3]
    assert lane.prefill_slice(8, credit) == 0
    assert lane.prefill_slice(8) == 3  # no credit asked for: every prime


def test_prefill_stops_at_once_when_no_waiting_prime_has_credit(lane: Lane) -> None:
    credit = PrimeCredit(burst=1, rate=1.0, clock=lambda: 0.0)
    credit.spend("heavy", 5)
    job = Job(GenerationParams(prime=(1, 2, 3), length=5, seed=1), lane.chars, "t", "heavy")
    lane.admit(job)
    started = time.perf_counter()
    prefill([lane], 10.0, credit)  # a 10 s budget, but nothing it may spend it on
    assert time.perf_counter() - started < 1
    assert lane.decoder._prime_pos[0] == 0
