"""The edge: a validated HTTP body becomes the one request type, GenerationParams, here and
nowhere else (the native body, and the OpenAI body through the same function); and a
text to score becomes ids.

What pydantic cannot check is checked here, against the settings and the model: the
length and prime limits, the vocabulary (prime, stop strings, logit_bias keys) and the
regex. Each failure is a ParamError naming the field, which the routes turn into a 422
(400 under /v1) in the shape FastAPI uses for its own.
"""

from __future__ import annotations

from app.engine.config import Limits
from app.engine.served_model import ServedModel
from app.http.schemas import GenerateRequest, ScoreRequest
from model.decoding.params import (
    GenerationParams,
    ParamError,
    encode_logit_bias,
    encode_prime,
    encode_stops,
    resolve_seed,
)
from model.text import NEWLINES_LF, normalize_newlines
from model.vocab import OutOfVocabularyError


def generation_params(
    served: ServedModel, limits: Limits, body: GenerateRequest
) -> GenerationParams:
    """The request as the engine takes it. Raises ParamError naming the field."""
    length = limits.default_length if body.length is None else body.length
    if length > limits.max_length:
        raise ParamError(
            "length",
            f"Input should be less than or equal to {limits.max_length}",
            "less_than_equal",
            {"le": limits.max_length},
        )
    if len(body.prime) > limits.max_prime_length:
        raise _too_long("prime", limits.max_prime_length, len(body.prime))
    if body.prompt_logprobs and body.logprobs is None:
        raise ParamError("prompt_logprobs", "needs logprobs (0 to 5)", "missing_logprobs")
    vocab = served.vocab
    return GenerationParams(
        prime=encode_prime(
            vocab, body.prime, skip_unknown=body.skip_unknown, newlines=served.newlines
        ),
        length=length,
        seed=resolve_seed(body.seed),
        temperature=body.temperature,
        top_k=body.top_k or 0,
        top_p=body.top_p,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        repeat_last_n=body.repeat_last_n,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        logit_bias=encode_logit_bias(vocab, body.logit_bias),
        stop=encode_stops(vocab, body.stop),
        logprobs=body.logprobs,
        prompt_logprobs=body.prompt_logprobs,
        regex=served.regexes.get(body.regex) if body.regex is not None else None,
    )


def score_ids(served: ServedModel, limits: Limits, body: ScoreRequest) -> tuple[list[int], int]:
    """The text to score as ids, and how many characters were left out (skip_unknown).
    Raises ParamError("text")."""
    if len(body.text) > limits.max_score_chars:
        raise _too_long("text", limits.max_score_chars, len(body.text))
    vocab = served.vocab
    text = normalize_newlines(body.text) if served.newlines == NEWLINES_LF else body.text
    missing = vocab.missing(text)
    if missing and not body.skip_unknown:
        error = OutOfVocabularyError(missing)
        raise ParamError(
            "text",
            f"{error} (set skip_unknown to leave them out)",
            "text_out_of_vocabulary",
            {"missing": missing},
        )
    ids = vocab.encode(text, skip_unknown=True)
    if len(ids) < 2:
        raise ParamError(
            "text", "needs at least two characters the model knows", "string_too_short"
        )
    return ids, len(text) - len(ids)


def _too_long(field: str, limit: int, length: int) -> ParamError:
    """The 422 of a string past its limit, in pydantic's own shape."""
    return ParamError(
        field,
        f"String should have at most {limit} characters",
        "string_too_long",
        {"max_length": limit, "length": length},
    )
