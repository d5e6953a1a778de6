"""app/completions.py: choices as engine jobs (seeds, greedy, clean-up on a full engine)."""

from __future__ import annotations

import pytest

from app.completions import CompletionRun, jobs_for
from app.engine import Job as EngineJob
from app.generation import EngineBusy, InvalidRequest, TextGenerator
from app.openai_schemas import CompletionRequest
from model.sampling import MAX_SEED

pytestmark = pytest.mark.anyio


def request(**fields: object) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "tiny", **fields})


def test_seeds_count_up_and_wrap(generator: TextGenerator) -> None:
    jobs = jobs_for(generator, request(n=3, seed=MAX_SEED - 1), "ab")
    assert [job.config.seed for job in jobs] == [MAX_SEED - 1, MAX_SEED, 0]


def test_greedy_is_top_k_one(generator: TextGenerator) -> None:
    for fields in ({"temperature": 0}, {"top_p": 0}):
        [job] = jobs_for(generator, request(**fields), "ab")
        assert (job.config.top_k, job.config.temperature, job.config.top_p) == (1, 1.0, 1.0)


def test_fields_are_named_as_openai_does(generator: TextGenerator) -> None:
    with pytest.raises(InvalidRequest) as caught:
        jobs_for(generator, request(max_tokens=10**6), "ab")
    assert caught.value.field == "max_tokens"


async def test_a_full_engine_leaves_nothing_running(
    generator: TextGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted: list[EngineJob] = []
    original = generator.engine.submit

    def submit_once(*args: object) -> EngineJob:
        if submitted:
            raise EngineBusy("full")
        submitted.append(original(*args))
        return submitted[0]

    monkeypatch.setattr(generator.engine, "submit", submit_once)
    with pytest.raises(EngineBusy):
        CompletionRun.start(generator, request(n=2, max_tokens=300))
    assert submitted[0].cancelled


async def test_collect_then_usage(generator: TextGenerator) -> None:
    run = CompletionRun.start(generator, request(prompt="ab", n=2, max_tokens=7))
    try:
        completion = await run.collect()
    finally:
        run.close()
    assert [len(choice.text) for choice in completion.choices] == [7, 7]
    assert completion.usage is not None and completion.usage.total_tokens == 2 + 14
