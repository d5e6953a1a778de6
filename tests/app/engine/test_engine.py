"""app/engine/engine.py: continuous batching, exact seeds under load, fair prefill, and faults that
stay with the request that caused them."""

import asyncio
import dataclasses
import time

import numpy as np
import pytest
import torch

from app.engine.config import EngineConfig
from app.engine.engine import DecodingEngine, EngineBusy
from app.engine.jobs import Job, JobFailed
from app.engine.lane import FAILED_MESSAGE
from app.gate.clients import ClientBusy, ClientLedger
from model.config import ModelConfig
from model.decoding.decoder import Draws
from model.decoding.generate import SingleStream
from model.decoding.params import GenerationParams, encode_stops
from model.network import CharRNN
from model.vocab import Vocabulary
from tests.logprobs import same_logprobs

VOCAB = Vocabulary.from_text("abcdefghijklmnopqrstuvwxyz .,\n")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=len(VOCAB), hidden_size=32)).eval()


def make_engine(model, **config):
    engine_config = EngineConfig(**{"max_active": 40, "max_queue": 100, **config})
    engine = DecodingEngine(engine_config, ClientLedger(engine_config))
    lane = engine.add_lane("tiny", model, VOCAB.chars)
    return engine, lane


@pytest.fixture
def running(model):
    engine, lane = make_engine(model)
    engine.start()
    yield engine, lane
    engine.stop()


def params(prime="the ", length=50, seed=1, **options):
    return GenerationParams(prime=tuple(VOCAB.encode(prime)), length=length, seed=seed, **options)


def ended(job: Job, timeout: float) -> bool:
    """Whether the engine ends `job` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.002)
    return job.done


def text_of(job: Job, timeout: float = 10.0) -> str:
    assert ended(job, timeout), "the job did not finish"
    if job.error:
        raise JobFailed(job.error)
    return VOCAB.decode(job.output.ids[: job.output.released])


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_matches_the_single_stream_decoder(running, model):
    engine, lane = running
    request = params(length=80, seed=9, top_k=5, temperature=0.7)
    expected = VOCAB.decode([i for ids in SingleStream(model, request) for i in ids])
    assert text_of(engine.submit(lane, request)) == expected


def test_seeded_request_with_every_option_same_alone_and_among_30_others(running):
    engine, lane = running
    request = params(
        "hello",
        length=150,
        seed=1234,
        top_p=0.9,
        min_p=0.02,
        repetition_penalty=1.3,
        repeat_last_n=16,
        frequency_penalty=0.4,
        presence_penalty=0.2,
        logit_bias=((VOCAB.encode("e")[0], -100.0), (VOCAB.encode("a")[0], 2.0)),
        stop=encode_stops(VOCAB, ["zz", "q."]),
        logprobs=3,
    )
    alone = engine.submit(lane, request)
    alone_text = text_of(alone)

    async def crowd():
        others = [
            engine.submit(lane, params("x" * (n % 5 + 1), length=100 + n, seed=n, logprobs=1))
            for n in range(15)
        ]
        await asyncio.sleep(0.01)
        target = engine.submit(lane, request)
        others += [
            engine.submit(lane, params("ab", length=40, seed=n, repetition_penalty=1.5))
            for n in range(15)
        ]

        async def read(job):
            return "".join([chunk.text async for chunk in job.chunks()])

        texts = await asyncio.gather(read(target), *(read(job) for job in others))
        return texts[0], target

    crowded_text, target = asyncio.run(crowd())
    assert crowded_text == alone_text
    assert same_logprobs(target.output.logprobs.read(3), alone.output.logprobs.read(3))  # exactly
    assert target.output.finish_reason == alone.output.finish_reason


def test_chunks_coalesce_and_cover_the_length(running):
    engine, lane = running

    async def read():
        job = engine.submit(lane, params("a", length=300))
        await asyncio.sleep(0.2)  # let characters pile up before reading
        return [chunk.text async for chunk in job.chunks()]

    chunks = asyncio.run(read())
    assert sum(len(c) for c in chunks) == 300
    assert len(chunks) < 300


def test_cancel_frees_the_row(running):
    engine, lane = running
    job = engine.submit(lane, params("a", length=10**6))
    wait_until(lambda: engine.active == 1)
    job.cancel()
    wait_until(lambda: engine.active == 0 and job.done)
    assert len(job.output.ids) < 10**6


def test_leaving_the_async_iterator_cancels(running):
    engine, lane = running

    async def read_a_little():
        job = engine.submit(lane, params("a", length=10**6))
        async for _ in job.chunks():
            break
        return job

    job = asyncio.run(read_a_little())
    assert job.cancelled
    wait_until(lambda: engine.active == 0)


def test_bounded_queue(model):
    engine, lane = make_engine(model, max_active=1, max_queue=2)
    # Not started: nothing leaves the queue; one request can take the free row, two wait.
    for seed in range(3):
        engine.submit(lane, params(seed=seed))
    with pytest.raises(EngineBusy):
        engine.submit(lane, params(seed=3))


def test_more_requests_than_rows_all_complete(model):
    engine, lane = make_engine(model, max_active=3, max_queue=50)
    engine.start()
    try:
        jobs = [engine.submit(lane, params("b", length=20, seed=n)) for n in range(12)]
        assert all(len(text_of(job)) == 20 for job in jobs)
    finally:
        engine.stop()


def test_zero_length_ends_after_the_prime(running):
    engine, lane = running
    job = engine.submit(lane, params(length=0))
    assert text_of(job, 2) == "" and job.output.finish_reason == "length"


def test_stop_fails_waiting_jobs(model):
    engine, lane = make_engine(model, max_active=1)
    engine.start()
    job = engine.submit(lane, params(length=10**7))
    wait_until(lambda: engine.active == 1)
    engine.stop()
    assert ended(job, 1) and "shutting down" in job.error
    assert engine.jobs_failed == 1


def test_chunk_interval_stretches_with_the_number_of_streams(model):
    engine, lane = make_engine(
        model, max_active=50, min_chunk_interval=0.02, max_chunks_per_second=100
    )
    assert engine.clients.chunk_interval() == 0.02
    engine.start()
    try:
        jobs = [engine.submit(lane, params(length=10**6, seed=n)) for n in range(50)]
        wait_until(lambda: engine.streaming == 50)
        assert engine.clients.chunk_interval() == pytest.approx(0.5)  # 50 streams / 100 chunks/s
    finally:
        for job in jobs:
            job.cancel()
        engine.stop()
    unbounded, _ = make_engine(model, max_chunks_per_second=0)
    assert unbounded.clients.chunk_interval() == EngineConfig().min_chunk_interval


def test_a_client_holding_many_streams_stretches_only_its_own_chunk_interval(model):
    engine, lane = make_engine(
        model,
        max_active=50,
        max_queue=100,
        max_requests_per_client=0,  # no quota: the rows are counted all the same
        min_chunk_interval=0.02,
        max_chunks_per_second=100,
        max_chunk_interval=10.0,
    )
    engine.start()
    jobs = []
    try:
        jobs += [engine.submit(lane, params(length=10**6, seed=n), "heavy") for n in range(40)]
        jobs += [engine.submit(lane, params(length=10**6), f"light{n}") for n in range(9)]
        jobs.append(engine.submit(lane, params(length=10**6)))  # no client: one of its own
        jobs += [engine.submit(lane, params(length=10**6), "queued") for _ in range(5)]
        wait_until(lambda: engine.active == 50)
        # 11 clients hold rows (the queued one holds none): 100 chunks/s shared 11 ways.
        assert engine.clients.chunk_interval("light0") == pytest.approx(11 / 100)
        assert engine.clients.chunk_interval(None) == pytest.approx(11 / 100)
        assert engine.clients.chunk_interval("heavy") == pytest.approx(11 * 40 / 100)
        engine.clients.config = dataclasses.replace(engine.clients.config, max_chunk_interval=1.0)
        assert engine.clients.chunk_interval("heavy") == 1.0  # every stream shows progress
    finally:
        for job in jobs:
            job.cancel()
        wait_until(lambda: engine.active == 0 and engine.queued == 0)
        engine.stop()
    assert engine.clients.chunk_interval("heavy") == 0.02  # the rows' counts went with them


def test_keepalive_gives_empty_chunks_while_nothing_comes(model):
    engine, lane = make_engine(model)  # not started: no chars ever
    job = engine.submit(lane, params(length=5))

    async def first_two():
        chunks = job.chunks(keepalive=0.02)
        return [(await anext(chunks)).text, (await anext(chunks)).text]

    assert asyncio.run(first_two()) == ["", ""]


# --- faults stay with their request --------------------------------------------------------
def run_ten_beside(engine, lane, victim):
    """Ten well-behaved streams and `victim`, all at once: → (their texts, the victim)."""
    good = [engine.submit(lane, params("ab", length=120, seed=n)) for n in range(10)]
    bad = engine.submit(lane, victim)
    good += [engine.submit(lane, params("cd", length=120, seed=n)) for n in range(10, 12)]
    return [text_of(job) for job in good], bad


def test_a_failure_admitting_one_request_fails_it_alone(running, monkeypatch):
    engine, lane = running
    decoder = lane.decoder
    real_add = decoder.add

    def add(request, owner=None, state=None):
        if request.seed == 666:
            raise RuntimeError("cannot admit this one")
        return real_add(request, owner, state)

    monkeypatch.setattr(decoder, "add", add)
    texts, bad = run_ten_beside(engine, lane, params(seed=666))
    assert [len(text) for text in texts] == [120] * 12
    assert ended(bad, 5) and bad.error == FAILED_MESSAGE  # the detail goes to the log only
    assert "cannot admit" not in bad.error


def test_a_row_whose_sampling_fails_fails_alone(running, monkeypatch):
    engine, lane = running
    decoder = lane.decoder
    real_add = decoder.add

    def add(request, owner=None, state=None):
        row = real_add(request, owner, state)
        if request.seed == 666:  # poison its state: every logit it gets is NaN
            decoder.network.h[:, row] = np.nan
        return row

    monkeypatch.setattr(decoder, "add", add)
    texts, bad = run_ten_beside(engine, lane, params(seed=666))
    assert [len(text) for text in texts] == [120] * 12
    assert ended(bad, 5) and "non-finite" in bad.error
    assert engine.active == 0


def test_a_row_whose_output_cannot_be_recorded_fails_alone(running, monkeypatch):
    engine, lane = running
    decoder = lane.decoder
    real_record = Draws.record

    def record(draws, index, output):
        if decoder.params[draws.rows[index]].seed == 666 and len(output.ids) >= 5:
            raise ValueError("broken output")
        return real_record(draws, index, output)

    monkeypatch.setattr(Draws, "record", record)
    texts, bad = run_ten_beside(engine, lane, params(seed=666, length=100))
    assert [len(text) for text in texts] == [120] * 12
    assert ended(bad, 5) and bad.error == FAILED_MESSAGE


def test_a_failing_batched_step_fails_its_rows_and_the_engine_carries_on(running, monkeypatch):
    engine, lane = running
    real_step = lane.decoder.step
    calls = 0

    def flaky(*args):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("boom")
        return real_step(*args)

    monkeypatch.setattr(lane.decoder, "step", flaky)
    failed = engine.submit(lane, params(length=500))  # more than two calls
    assert ended(failed, 5) and failed.error == FAILED_MESSAGE
    assert len(text_of(engine.submit(lane, params(length=10, seed=2)))) == 10
    assert engine.alive


# --- prefill: fair, batched, cached --------------------------------------------------------
def test_long_primes_do_not_freeze_a_running_stream(model):
    engine, lane = make_engine(model, max_active=64, prefill_share=0.2)
    engine.start()
    try:
        stream = engine.submit(lane, params("a", length=400, seed=1))
        wait_until(lambda: len(stream.output.ids) > 0)
        burst = [engine.submit(lane, params("the cat " * 250, length=1, seed=n)) for n in range(40)]
        assert len(text_of(stream, 30)) == 400
        # The stream ended while the burst's primes (80,000 characters) were still running.
        assert sum(job.done for job in burst) < len(burst)
        for job in burst:
            assert len(text_of(job, 60)) == 1
    finally:
        engine.stop()


@pytest.mark.parametrize("rate", [1000.0, 0.0])
def test_a_clients_burst_of_long_primes_waits_for_its_credit_while_others_stream(model, rate):
    """While a stream decodes, one client's 800 prime characters past its burst of 100 go
    at 1,000 a second (rate 0: no limit, far faster); another client's short prime, sent
    after them, is not held up by them."""
    engine, lane = make_engine(
        model, max_active=64, prefill_burst_chars=100, prefill_chars_per_second=rate
    )
    engine.start()
    try:
        stream = engine.submit(lane, params("a", length=10**6, seed=1), client="reader")
        wait_until(lambda: len(stream.output.ids) > 0)
        started = time.monotonic()
        burst = [
            engine.submit(lane, params("the cat " * 25, length=1, seed=n), client="burst")
            for n in range(4)
        ]
        other = engine.submit(lane, params("a cat ", length=1, seed=9), client="user")
        assert len(text_of(other)) == 1
        if rate:
            assert not all(job.done for job in burst)
        for job in burst:
            assert len(text_of(job, 30)) == 1
        seconds = time.monotonic() - started
        throttled = 0.8 * (800 - 100) / 1000  # a fifth off for the clock's grain
        assert seconds >= throttled if rate else seconds < throttled
        assert not stream.done  # it decoded all along
    finally:
        engine.stop()


def test_a_repeated_prime_skips_its_prefill_and_changes_nothing(model):
    engine, lane = make_engine(model, prime_cache_bytes=1 << 20)
    engine.start()
    try:
        request = params("a long enough prime " * 5, length=60, seed=3, logprobs=2)
        first = engine.submit(lane, request)
        first_text = text_of(first)
        cache = lane.decoder.cache
        assert cache is not None and len(cache) == 1 and cache.hits == 0
        second = engine.submit(lane, request)
        assert text_of(second) == first_text
        assert same_logprobs(second.output.logprobs.read(2), first.output.logprobs.read(2))
        assert cache.hits == 1
    finally:
        engine.stop()


def test_prompt_logprobs_are_recorded_during_the_prefill(running, model):
    engine, lane = running
    job = engine.submit(lane, params("the cat", length=3, logprobs=2, prompt_logprobs=True))
    text_of(job)
    prompt = job.output.prompt_logprobs.read(2)
    assert prompt.ids.tolist() == VOCAB.encode("he cat")
    with torch.no_grad():
        logits, _ = model(torch.tensor([VOCAB.encode("the cat")]))
    expected = torch.log_softmax(logits[0, :-1].double(), dim=-1)
    columns = zip(prompt.ids.tolist(), prompt.chosen.tolist(), strict=True)
    for position, (char, logprob) in enumerate(columns):
        assert logprob == pytest.approx(float(expected[position, char]), abs=1e-4)


def test_one_client_cannot_take_every_row(model):
    engine, lane = make_engine(model, max_requests_per_client=2)
    first = engine.submit(lane, params(length=10**6), client="10.0.0.1")
    engine.submit(lane, params(length=10**6, seed=2), client="10.0.0.1")
    with pytest.raises(ClientBusy, match="2 requests"):
        engine.submit(lane, params(seed=3), client="10.0.0.1")
    engine.submit(lane, params(seed=4), client="10.0.0.2")  # another client: fine
    engine.submit(lane, params(seed=5))  # not counted (the library's own use)
    engine.start()
    try:
        first.cancel()
        assert ended(first, 5)
        engine.submit(lane, params(seed=6), client="10.0.0.1")  # one ended: room again
    finally:
        engine.stop()


def test_a_client_with_many_streams_does_not_slow_the_others(model):
    engine, lane = make_engine(model, max_active=64)
    heavy = [engine.submit(lane, params(length=300, seed=n), client="heavy") for n in range(40)]
    light = engine.submit(lane, params(length=300, seed=99), client="light")
    alone = engine.submit(lane, params(length=300, seed=0))  # the same as heavy[0]
    engine.start()
    try:
        assert ended(light, 10)
        # light stepped every time; heavy's 40 rows shared ~half the steps between them.
        assert sum(job.done for job in heavy) == 0
        assert text_of(heavy[0]) == text_of(alone)  # later, but the same text
    finally:
        engine.stop()


def test_lanes_step_side_by_side_and_a_failing_one_fails_alone(model, monkeypatch):
    engine, first = make_engine(model)
    torch.manual_seed(1)
    other_model = CharRNN(ModelConfig(vocab_size=len(VOCAB), hidden_size=32)).eval()
    second = engine.add_lane("other", other_model, VOCAB.chars)
    alone = [
        SingleStream(lane_model, params(length=200, seed=n))
        for n, lane_model in ((3, model), (4, other_model))
    ]
    expected = [VOCAB.decode([i for ids in stream for i in ids]) for stream in alone]
    real_step = first.decoder.step
    calls = 0

    def flaky(*args):
        nonlocal calls
        calls += 1
        if calls == 3:  # of 7 calls of 32 steps
            raise RuntimeError("boom")
        return real_step(*args)

    engine.start()
    try:
        jobs = [
            engine.submit(first, params(length=200, seed=3)),
            engine.submit(second, params(length=200, seed=4)),
        ]
        assert [text_of(job) for job in jobs] == expected  # side by side, the same texts
        monkeypatch.setattr(first.decoder, "step", flaky)
        doomed = engine.submit(first, params(length=200, seed=3))
        survivor = engine.submit(second, params(length=200, seed=4))
        assert ended(doomed, 5) and doomed.error == FAILED_MESSAGE
        assert text_of(survivor) == expected[1]
    finally:
        engine.stop()


def test_an_iteration_admits_a_steps_worth_for_each_of_its_steps(model):
    """max_admit_per_step requests per decoding step: an iteration of 3 steps admits 6."""
    engine, lane = make_engine(model, max_admit_per_step=2, block_steps=3)
    for seed in range(10):
        engine.submit(lane, params(seed=seed))
    assert len(engine._pop_admissible()) == 6 and engine.queued == 4
