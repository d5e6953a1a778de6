"""app/http/completions.py: choices as engine jobs (seeds, greedy, names as OpenAI's, clean-up
on a full engine)."""

from __future__ import annotations

import pytest

from app.engine.engine import EngineBusy
from app.engine.jobs import Job
from app.engine.service import ModelService
from app.http.completions import CompletionRun, choice_params
from app.http.openai_schemas import CompletionRequest
from model.decoding.params import MAX_SEED, ParamError

pytestmark = pytest.mark.anyio


def request(**fields: object) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "tiny", **fields})


def test_seeds_count_up_and_wrap(service: ModelService, monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list[int] = []
    monkeypatch.setattr(service, "submit", lambda _, params, *__: seeds.append(params.seed))
    CompletionRun.start(service, service.model(), request(n=3, seed=MAX_SEED - 1))
    assert seeds == [MAX_SEED - 1, MAX_SEED, 0]


def test_greedy_is_temperature_zero(service: ModelService) -> None:
    for fields in ({"temperature": 0}, {"top_p": 0}):
        params = choice_params(service, service.model(), request(**fields), "ab", 1)
        assert (params.temperature, params.top_p) == (0.0, 1.0)


def test_our_sampling_fields_pass_through(service: ModelService) -> None:
    params = choice_params(
        service,
        service.model(),
        request(top_k=3, min_p=0.2, repetition_penalty=1.2, repeat_last_n=9, echo=True, logprobs=1),
        "ab",
        1,
    )
    assert (params.top_k, params.min_p, params.repetition_penalty, params.repeat_last_n) == (
        3,
        0.2,
        1.2,
        9,
    )
    assert params.prompt_logprobs and params.logprobs == 1


def test_fields_are_named_as_openai_does(service: ModelService) -> None:
    with pytest.raises(ParamError) as caught:
        choice_params(service, service.model(), request(max_tokens=10**6), "ab", 1)
    assert caught.value.field == "max_tokens"
    with pytest.raises(ParamError) as caught:
        choice_params(service, service.model(), request(), "€", 1)
    assert (caught.value.field, caught.value.kind) == ("prompt", "prompt_out_of_vocabulary")


async def test_a_full_engine_leaves_nothing_running(
    service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted: list[Job] = []
    original = service.submit

    def submit_once(*args: object) -> Job:
        if submitted:
            raise EngineBusy("full")
        submitted.append(original(*args))
        return submitted[0]

    monkeypatch.setattr(service, "submit", submit_once)
    with pytest.raises(EngineBusy):
        CompletionRun.start(service, service.model(), request(n=2, max_tokens=300))
    assert submitted[0].cancelled


async def test_collect_then_usage(service: ModelService) -> None:
    service.start()
    run = CompletionRun.start(service, service.model(), request(prompt="ab", n=2, max_tokens=7))
    try:
        completion = await run.collect()
    finally:
        run.close()
        service.stop()
    assert [len(choice.text) for choice in completion.choices] == [7, 7]
    assert completion.usage is not None and completion.usage.total_tokens == 2 + 14
