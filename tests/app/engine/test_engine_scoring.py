"""app/engine/engine.py's scoring: admitted as generation is (queue bound and quota first,
nothing made before), texts read together and shared round-robin by client, results those
of a text scored alone, and a text whose client left dropped."""

import asyncio
import time

import numpy as np
import pytest
import torch

import app.engine.scoring_queue as scoring_queue
from app.engine.config import EngineConfig
from app.engine.engine import DecodingEngine, EngineBusy
from app.gate.clients import ClientBusy, ClientLedger
from model.config import ModelConfig
from model.network import CharRNN
from model.scoring import Scorer

VOCAB = 30


@pytest.fixture
def model() -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=VOCAB, hidden_size=32)).eval()


def make_engine(model: CharRNN, **config):
    engine_config = EngineConfig(**{"max_active": 8, "max_queue": 100, **config})
    engine = DecodingEngine(engine_config, ClientLedger(engine_config))
    return engine, engine.add_lane("tiny", model, tuple(chr(97 + i) for i in range(VOCAB)))


def ids(length: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, VOCAB, length).tolist()


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


class CountedScorer(Scorer):
    made = 0

    def __init__(self, *args, **kwargs):
        CountedScorer.made += 1
        super().__init__(*args, **kwargs)


def test_quota_and_queue_come_before_any_scorer(model, monkeypatch) -> None:
    monkeypatch.setattr(scoring_queue, "Scorer", CountedScorer)
    CountedScorer.made = 0
    engine, lane = make_engine(model, max_requests_per_client=2, max_queue=3)
    engine.submit_score(lane, ids(50), 5, "a")
    engine.submit_score(lane, ids(50), 5, "a")
    with pytest.raises(ClientBusy):
        engine.submit_score(lane, ids(50), 5, "a")
    engine.submit_score(lane, ids(50), 5, "b")
    with pytest.raises(EngineBusy):
        engine.submit_score(lane, ids(50), 5, "c")
    assert CountedScorer.made == 0  # queued texts hold their ids only
    assert engine.queued == 3
    assert engine.clients.full("a") and not engine.clients.full("b")


def test_texts_scored_together_equal_each_alone(model) -> None:
    engine, lane = make_engine(model)
    texts = [ids(length, seed) for seed, length in enumerate([700, 5, 300, 2, 1200])]
    jobs = [engine.submit_score(lane, text, 3, f"client{n}") for n, text in enumerate(texts)]
    engine.start()
    try:
        wait_until(lambda: all(job.done for job in jobs))
    finally:
        engine.stop()
    for text, job in zip(texts, jobs, strict=True):
        assert job.error is None
        alone = Scorer(model, text, 3)
        while not alone.done:
            alone.advance(128)
        np.testing.assert_array_equal(job.scorer.logprobs, alone.logprobs)
        np.testing.assert_array_equal(job.scorer.top_ids, alone.top_ids)
        np.testing.assert_array_equal(job.scorer.top_logprobs, alone.top_logprobs)


def test_a_light_client_is_not_stuck_behind_a_heavy_one(model) -> None:
    engine, lane = make_engine(model)  # score_rows texts at once (8)
    heavy = [engine.submit_score(lane, ids(4000, n), 0, "heavy") for n in range(12)]
    light = engine.submit_score(lane, ids(40), 0, "light")  # last in
    engine.start()
    try:
        wait_until(lambda: light.done)
        finished_heavy = sum(job.done for job in heavy)
        wait_until(lambda: all(job.done for job in heavy), timeout=120)
    finally:
        engine.stop()
    assert light.error is None and light.scorer.done
    assert finished_heavy < len(heavy) // 2  # not first in, first out


def test_rows_are_started_round_robin_by_client(model) -> None:
    engine, lane = make_engine(model)
    order: list[str] = []
    jobs = []
    for client in ["a", "a", "a", "b", "b", "c"]:
        job = engine.submit_score(lane, ids(30), 0, client)
        job.on_finish(lambda client=client: order.append(client))  # (replaces the release)
        job.answered()  # no answer to wait for: the callback comes when the engine ends it
        jobs.append(job)
    engine.start()
    try:
        wait_until(lambda: all(job.done for job in jobs))
    finally:
        engine.stop()
    assert order[:3] == ["a", "b", "c"]  # started (and, as long, ended) client by client


def test_a_text_whose_client_left_is_dropped(model) -> None:
    engine, lane = make_engine(model)
    rows = 8  # EngineConfig.score_rows: every row is taken
    running = [engine.submit_score(lane, ids(200_000, n), 0, "a") for n in range(rows)]
    busy = running[0]
    waiting = engine.submit_score(lane, ids(200_000, 1), 5, "a")

    async def leave() -> None:
        task = asyncio.ensure_future(waiting.result())
        await asyncio.sleep(0.05)
        task.cancel()  # the client hung up (app/gate/hang_up.py cancels the route)
        with pytest.raises(asyncio.CancelledError):
            await task

    engine.start()
    try:
        asyncio.run(leave())
        assert waiting.cancelled
        wait_until(lambda: waiting.done, timeout=5)
        assert not busy.done  # it went before the text ahead of it in its queue ended
        assert waiting.scorer is None  # never started: nothing was made for it
        for job in running:
            job.cancel()
        wait_until(lambda: all(job.done for job in running), timeout=5)
        assert engine.queued == 0
        assert not engine.clients.full("a")
    finally:
        engine.stop()
