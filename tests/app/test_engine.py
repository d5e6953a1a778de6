import asyncio
import time

import pytest
import torch

from app.engine import DecodingEngine, EngineBusy, EngineConfig
from model.config import ModelConfig
from model.decoder import generate
from model.network import CharRNN
from model.sampling import SamplingConfig
from model.vocab import Vocabulary

VOCAB = Vocabulary.from_text("abcdefghijklmnopqrstuvwxyz .,\n")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=len(VOCAB), hidden_size=32)).eval()


@pytest.fixture
def engine(model):
    engine = DecodingEngine(model, VOCAB, EngineConfig(max_active=40, max_queue=100))
    engine.start()
    yield engine
    engine.stop()


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_matches_the_library_sampler(engine, model):
    config = SamplingConfig(length=80, seed=9, top_k=5, temperature=0.7)
    expected = "".join(generate(model, VOCAB, "the ", config))
    assert engine.submit(VOCAB.encode("the "), config, 9).wait_text(10) == expected


def test_seeded_request_same_text_alone_and_among_30_others(engine):
    config = SamplingConfig(length=150, top_p=0.9)
    alone = engine.submit(VOCAB.encode("hello"), config, 1234).wait_text(10)

    async def crowd():
        others = [
            engine.submit(VOCAB.encode("x" * (n % 5 + 1)), SamplingConfig(length=100 + n), n)
            for n in range(15)
        ]
        await asyncio.sleep(0.01)
        target = engine.submit(VOCAB.encode("hello"), config, 1234)
        others += [
            engine.submit(VOCAB.encode("ab"), SamplingConfig(length=40), n) for n in range(15)
        ]

        async def read(job):
            return "".join([chunk async for chunk in job.chunks()])

        texts = await asyncio.gather(read(target), *(read(job) for job in others))
        return texts[0]

    assert asyncio.run(crowd()) == alone


def test_chunks_coalesce_and_cover_the_length(engine):
    async def read():
        job = engine.submit(VOCAB.encode("a"), SamplingConfig(length=300, seed=1), 1)
        await asyncio.sleep(0.2)  # let characters pile up before reading
        return [chunk async for chunk in job.chunks()]

    chunks = asyncio.run(read())
    assert sum(len(c) for c in chunks) == 300
    assert len(chunks) < 300


def test_cancel_frees_the_row(engine):
    job = engine.submit(VOCAB.encode("a"), SamplingConfig(length=10**6, seed=1), 1)
    wait_until(lambda: engine.active == 1)
    job.cancel()
    wait_until(lambda: engine.active == 0 and job.done)
    assert job.stats.chars < 10**6


def test_leaving_the_async_iterator_cancels(engine):
    async def read_a_little():
        job = engine.submit(VOCAB.encode("a"), SamplingConfig(length=10**6, seed=1), 1)
        async for _ in job.chunks():
            break
        return job

    job = asyncio.run(read_a_little())
    assert job.cancelled
    wait_until(lambda: engine.active == 0)


def test_bounded_queue(model):
    engine = DecodingEngine(model, VOCAB, EngineConfig(max_active=1, max_queue=2))
    # Not started: nothing leaves the queue; one request can take the free row, two wait.
    for seed in range(3):
        engine.submit([0], SamplingConfig(length=5), seed)
    with pytest.raises(EngineBusy):
        engine.submit([0], SamplingConfig(length=5), 3)


def test_more_requests_than_rows_all_complete(model):
    engine = DecodingEngine(model, VOCAB, EngineConfig(max_active=3, max_queue=50))
    engine.start()
    try:
        jobs = [engine.submit([1], SamplingConfig(length=20), n) for n in range(12)]
        assert all(len(job.wait_text(10)) == 20 for job in jobs)
    finally:
        engine.stop()


def test_a_failing_step_fails_its_jobs_and_the_engine_carries_on(engine, monkeypatch):
    original = engine.decoder.step
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original()

    monkeypatch.setattr(engine.decoder, "step", flaky)
    failed = engine.submit([1], SamplingConfig(length=50), 1)
    with pytest.raises(RuntimeError, match="boom"):
        failed.wait_text(10)
    assert len(engine.submit([1], SamplingConfig(length=10), 2).wait_text(10)) == 10


def test_zero_length_finishes_at_once(engine):
    assert engine.submit([1], SamplingConfig(length=0), 1).wait_text(1) == ""


def test_stop_fails_waiting_jobs(model):
    engine = DecodingEngine(model, VOCAB, EngineConfig(max_active=1))
    engine.start()
    job = engine.submit([1], SamplingConfig(length=10**7), 1)
    wait_until(lambda: engine.active == 1)
    engine.stop()
    with pytest.raises(RuntimeError, match="shutting down"):
        job.wait_text(1)
    assert engine.jobs_failed == 1


def test_chunk_interval_stretches_with_the_number_of_streams(model):
    config = EngineConfig(max_active=50, min_chunk_interval=0.02, max_chunks_per_second=100)
    engine = DecodingEngine(model, VOCAB, config)
    assert engine.chunk_interval() == 0.02
    engine.start()
    try:
        jobs = [engine.submit([1], SamplingConfig(length=10**6), n) for n in range(50)]
        wait_until(lambda: engine.active == 50)
        assert engine.chunk_interval() == pytest.approx(0.5)  # 50 streams / 100 chunks/s
    finally:
        for job in jobs:
            job.cancel()
        engine.stop()
    unbounded = DecodingEngine(model, VOCAB, EngineConfig(max_chunks_per_second=0))
    assert unbounded.chunk_interval() == EngineConfig().min_chunk_interval


def test_keepalive_gives_empty_chunks_while_nothing_comes(model):
    engine = DecodingEngine(model, VOCAB, EngineConfig())  # not started: no chars ever
    job = engine.submit([1], SamplingConfig(length=5), 1)

    async def first_two():
        chunks = job.chunks(keepalive=0.02)
        return [await anext(chunks), await anext(chunks)]

    assert asyncio.run(first_two()) == ["", ""]
