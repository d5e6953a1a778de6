"""The edge: a validated HTTP body becomes the one request type, GenerationParams, here and
nowhere else (the native body, and the OpenAI body through the same function); and a
text to score becomes ids.

What pydantic cannot check is checked here, against the settings and the model: the
length and prime limits, the vocabulary (prime, stop strings, logit_bias keys) and the
regex. Each failure is a ParamError naming the field, which the routes turn into a 422
(400 under /v1) in the shape FastAPI uses for its own.

A request that continues a text from its state (model/state.py) is built as any other,
then its prime becomes the state's last character and the request's own text
(`continuing`): MAX_PRIME_LENGTH counts the new text only.
"""

from __future__ import annotations

import dataclasses

from app.engine.config import Limits
from app.engine.served_model import ServedModel
from app.http.schemas import GenerateRequest, ScoreRequest
from model.decoding.automaton import Automaton
from model.decoding.params import GenerationParams, ParamError, build_params, too_long
from model.state import RecurrentState, continuation_prime
from model.text import as_read
from model.vocab import OutOfVocabularyError


def generation_params(
    served: ServedModel, limits: Limits, body: GenerateRequest, regex: Automaton | None = None
) -> GenerationParams:
    """The request as the engine takes it (model/decoding/params.py's build_params, as for
    every caller). Raises ParamError naming the field. `regex`: the body's pattern,
    compiled already (served.regexes.automaton, charged to its client); without it the
    pattern is compiled here, blocking this thread."""
    return build_params(
        served.vocab,
        body.prime,
        length=body.length,
        default_length=limits.default_length,
        max_length=limits.max_length,
        max_prime_chars=limits.max_prime_length,
        seed=body.seed,
        stop=body.stop,
        logit_bias=body.logit_bias,
        regex=regex if regex is not None else body.regex,
        regexes=served.regexes.get,
        skip_unknown=body.skip_unknown,
        newlines=served.newlines,
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        repeat_last_n=body.repeat_last_n,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        logprobs=body.logprobs,
        prompt_logprobs=body.prompt_logprobs,
    )


def decode_state(served: ServedModel, token: str | None) -> RecurrentState | None:
    """The state a request continues (None without one), checked against the model (its
    form, size, values and fingerprint). Raises ParamError("state") saying what is wrong."""
    return None if token is None else served.state_codec.decode(token)


def continuing(
    served: ServedModel,
    params: GenerationParams,
    state: RecurrentState | None,
    text: str,
    skip_unknown: bool = False,
) -> GenerationParams:
    """`params` reading `text` (the request's own prime) after `state`'s text; as they are
    without a state. Raises ParamError("prime") as generation_params does."""
    if state is None:
        return params
    prime = continuation_prime(
        state, served.vocab, text, skip_unknown=skip_unknown, newlines=served.newlines
    )
    return dataclasses.replace(params, prime=prime)


def score_ids(
    served: ServedModel, limits: Limits, body: ScoreRequest, state: RecurrentState | None = None
) -> tuple[list[int], int]:
    """The text to score as ids (after `state`'s text, if given: its last character
    first), and how many characters were left out (skip_unknown). Raises
    ParamError("text")."""
    if len(body.text) > limits.max_score_chars:
        raise too_long("text", limits.max_score_chars, len(body.text))
    vocab = served.vocab
    text = as_read(body.text, served.newlines)
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
    oov = len(text) - len(ids)
    if state is not None:
        ids = list(state.prime(ids))
    cells = len(ids) * max(1, body.top_n)
    if cells > limits.max_score_cells:
        field = "top_n" if body.top_n > 1 else "text"
        raise ParamError(
            field,
            f"{len(ids)} characters × top_n {body.top_n} is past the {limits.max_score_cells} "
            "result cells one request may ask for (MAX_SCORE_CELLS): lower top_n or "
            "split the text",
            "score_too_big",
            {"max_score_cells": limits.max_score_cells, "cells": cells},
        )
    if len(ids) < 2:
        least = "one character" if state is not None else "two characters"
        raise ParamError("text", f"needs at least {least} the model knows", "string_too_short")
    return ids, oov
