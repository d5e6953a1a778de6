"""app/http/requests.py: an HTTP body becomes GenerationParams, with the settings' limits and
the model's vocabulary applied, and every refusal naming its field."""

from __future__ import annotations

import pytest

from app.engine.service import ModelService
from app.http.requests import generation_params
from app.http.schemas import GenerateRequest
from model.decoding.params import ParamError


def params_of(service: ModelService, **fields: object):
    return generation_params(service.model(), service.limits, GenerateRequest(**fields))


def test_defaults_and_the_seed(service: ModelService) -> None:
    params = params_of(service, prime="abc")
    vocab = service.model().vocab
    assert params.prime == tuple(vocab.encode("abc"))
    assert params.length == service.limits.default_length
    assert isinstance(params.seed, int)
    assert params_of(service, seed=5).seed == 5
    assert params.top_k == 0 and params.stop == () and params.logit_bias == ()
    assert params_of(service).prime == tuple(vocab.encode("\n"))  # empty: a new paragraph


def test_every_option_arrives(service: ModelService) -> None:
    vocab = service.model().vocab
    params = params_of(
        service,
        prime="ab",
        temperature=0,
        top_k=7,
        top_p=0.5,
        min_p=0.1,
        repetition_penalty=1.3,
        repeat_last_n=20,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        logit_bias={"a": -100, "b": 3},
        stop=["ab", "€x"],  # "€" is not in the vocabulary: that stop can never appear
        logprobs=2,
        prompt_logprobs=True,
        regex="[ab]+",
    )
    assert (params.temperature, params.top_k, params.top_p, params.min_p) == (0, 7, 0.5, 0.1)
    assert (params.repetition_penalty, params.repeat_last_n) == (1.3, 20)
    assert (params.frequency_penalty, params.presence_penalty) == (0.5, -0.5)
    assert params.logit_bias == ((vocab.encode("a")[0], -100.0), (vocab.encode("b")[0], 3.0))
    assert params.stop == (tuple(vocab.encode("ab")),)
    assert (params.logprobs, params.prompt_logprobs) == (2, True)
    assert params.regex is service.model().regexes.get("[ab]+")  # compiled once, cached


def test_crlf_in_a_prime_reads_as_lf(service: ModelService) -> None:
    vocab = service.model().vocab
    assert params_of(service, prime="a\r\nb\rc").prime == tuple(vocab.encode("a\nb\nc"))


@pytest.mark.parametrize(
    ("fields", "field", "kind"),
    [
        ({"length": 301}, "length", "less_than_equal"),
        ({"prime": "a" * 51}, "prime", "string_too_long"),
        ({"prime": "abc€xyz€ß"}, "prime", "prime_out_of_vocabulary"),
        ({"logit_bias": {"€": 1}}, "logit_bias", "unknown_character"),
        ({"logit_bias": {"ab": 1}}, "logit_bias", "unknown_character"),
        ({"prompt_logprobs": True}, "prompt_logprobs", "missing_logprobs"),
        ({"regex": "é+"}, "regex", "regex_unmatchable"),
        ({"regex": "(unclosed"}, "regex", "regex_invalid"),
    ],
)
def test_refusals_name_the_field(
    service: ModelService, fields: dict, field: str, kind: str
) -> None:
    with pytest.raises(ParamError) as caught:
        params_of(service, **fields)
    assert (caught.value.field, caught.value.kind) == (field, kind)


def test_banning_every_character_is_refused(service: ModelService) -> None:
    chars = service.model().vocab.chars
    with pytest.raises(ParamError, match="every character"):
        params_of(service, logit_bias={char: -100 for char in chars})


def test_unknown_prime_chars_are_listed_or_skipped(service: ModelService) -> None:
    with pytest.raises(ParamError) as caught:
        params_of(service, prime="abc€xyz€ß")
    assert caught.value.ctx["missing"] == ["€", "ß"]
    assert "'€', 'ß'" in caught.value.message
    skipped = params_of(service, prime="abc€xyz€ß", skip_unknown=True)
    assert skipped.prime == tuple(service.model().vocab.encode("abcxyz"))
