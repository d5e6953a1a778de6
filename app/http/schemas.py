"""The HTTP edge of the native API: request and response bodies, validated by pydantic.

Every field's default and bound comes from model/decoding/params.py (the one request
type); limits that depend on the settings (MAX_LENGTH, MAX_PRIME_LENGTH) and on the
model's vocabulary are checked when the body becomes GenerationParams (app/http/requests.py),
which names the offending field the same way.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.engine.config import Limits
from app.engine.served_model import ServedModel
from model.chat_template import PLAIN, ChatTemplateError, stored_template
from model.decoding.params import (
    MAX_FREQUENCY_PENALTY,
    MAX_LOGIT_BIAS,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_LOGPROBS,
    MAX_REPEAT_LAST_N,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_STOP_CHARS,
    MAX_STOPS,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    GenerationParams,
)

FinishReason = Literal["length", "stop", "regex"]

# A text's recurrent state as a client keeps it (model/state.py), in every API's words.
STATE_DESCRIPTION = (
    "a `state` from an earlier response of this model: continue that text as if it were "
    "sent whole (the text of this request is read after it; empty: right after it)"
)
RETURN_STATE_DESCRIPTION = (
    "also return `state`: everything the model has read (the text, including a stop "
    "string that ended it), a few KB whatever its length, to continue it on any replica"
)
STATE_OUT_DESCRIPTION = "with return_state: the state after the whole text, to pass as `state`"


def _json_object(value: Any) -> Any:
    """A query string carries logit_bias as JSON text: {"e": -100}. Nesting too deep for
    the parser (a RecursionError) is refused like any other malformed text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            raise ValueError('must be a JSON object such as {"e": -100}') from None
    return value


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Bias = Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS, allow_inf_nan=False)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class SamplingFields(BaseModel):
    """The sampler chain's settings, as both native routes and the OpenAI route take them."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_K,
        description="sample only from the k likeliest chars; 0, null or any k ≥ the "
        "vocabulary size keep them all",
    )
    min_p: float = Field(
        GenerationParams.min_p,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="drop chars less likely than min_p × the likeliest one",
    )
    repetition_penalty: float = Field(
        GenerationParams.repetition_penalty,
        gt=0,
        le=MAX_REPETITION_PENALTY,
        allow_inf_nan=False,
        description="> 1 discourages the chars among the last repeat_last_n (prime "
        "included): a positive logit is divided by it, a negative one multiplied",
    )
    repeat_last_n: int = Field(
        GenerationParams.repeat_last_n,
        ge=0,
        le=MAX_REPEAT_LAST_N,
        description="how many of the last chars repetition_penalty looks at",
    )
    frequency_penalty: float = Field(
        GenerationParams.frequency_penalty,
        ge=-MAX_FREQUENCY_PENALTY,
        le=MAX_FREQUENCY_PENALTY,
        allow_inf_nan=False,
        description="OpenAI's: logit -= penalty × times the char was generated",
    )
    presence_penalty: float = Field(
        GenerationParams.presence_penalty,
        ge=-MAX_FREQUENCY_PENALTY,
        le=MAX_FREQUENCY_PENALTY,
        allow_inf_nan=False,
        description="OpenAI's: logit -= penalty once the char has been generated",
    )
    regex: str | None = Field(
        None, description="the output must match this regular expression (whole)"
    )
    skip_unknown: bool = Field(
        False, description="drop prime characters the model does not know instead of an error"
    )


class GenerateRequest(SamplingFields):
    """What to generate: the same fields as a JSON body (POST) or query parameters (GET)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"prime": "ROMEO:\n", "length": 200, "temperature": 0.8, "seed": 42}]
        },
    )

    model: str | None = Field(
        None, description="which served model (GET /v1/models); default: the server's default model"
    )
    prime: str = Field(
        "",
        description="text to continue; empty starts a new paragraph (after a `state`: "
        "continues its text right where it ended)",
    )
    length: int | None = Field(
        None,
        ge=0,
        description="characters to generate at most; default and maximum are the "
        "server's DEFAULT_LENGTH and MAX_LENGTH (see GET /model)",
    )
    temperature: float = Field(
        GenerationParams.temperature,
        ge=0,
        le=MAX_TEMPERATURE,
        allow_inf_nan=False,
        description="0: greedy; below 1 more conservative, above 1 wilder",
    )
    top_p: float = Field(
        GenerationParams.top_p,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="nucleus sampling: the smallest likeliest set reaching this probability",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="repeat a run by passing the seed its stats reported; default: a fresh one",
    )
    stop: Annotated[list[StopString], BeforeValidator(_listed)] = Field(
        [],
        max_length=MAX_STOPS,
        description=f"up to {MAX_STOPS} strings; generation ends at the first one, which is "
        "not returned (a stop inside the prime does not count)",
    )
    logit_bias: Annotated[dict[str, Bias], BeforeValidator(_json_object)] = Field(
        {},
        max_length=MAX_LOGIT_BIAS_ENTRIES,
        description="{character: bias in [-100, 100]} added to its logit; -100 bans it "
        "(in a query string: JSON text)",
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="return each generated char's log-probability and this many likeliest "
        "alternatives (the network's own distribution)",
    )
    prompt_logprobs: bool = Field(
        False, description="with logprobs: also each prime char's (after the first)"
    )
    state: str | None = Field(None, description=STATE_DESCRIPTION)
    return_state: bool = Field(False, description=RETURN_STATE_DESCRIPTION)


class Logprobs(BaseModel):
    """Log-probabilities of a run of characters, as columns: entry i of each list is about
    chars[i] (the layout of OpenAI's legacy completion logprobs)."""

    chars: list[str]
    logprobs: list[float] = Field(description="natural log of each char's probability")
    top_chars: list[list[str]] = Field(
        description="the likeliest chars at each position, most likely first"
    )
    top_logprobs: list[list[float]] = Field(description="their log-probabilities")


class GenerationStats(BaseModel):
    chars: int = Field(description="characters returned")
    seconds: float = Field(description="from the request to its last character, queue included")
    chars_per_second: float
    seed: int = Field(description="the seed used: pass it back to get the same text")
    prime_chars: int = Field(description="characters of the prime the network read")
    model: str = Field(description="name of the model that generated the text")
    first_char_seconds: float | None = Field(
        None, description="from the request to its first character (queue and prime included)"
    )


class GenerationEnd(BaseModel):
    """How a generation ended (also the `done` event of a stream, with its stats)."""

    finish_reason: FinishReason = Field(
        description="length: all chars made; stop: a stop string; regex: the match is done"
    )
    regex_complete: bool | None = Field(
        None,
        description="with a regex: whether the text is a whole match (false when "
        "length ran out first)",
    )
    prompt_logprobs: Logprobs | None = Field(
        None, description="with prompt_logprobs: the prime's chars after the first"
    )
    stats: GenerationStats
    state: str | None = Field(None, description=STATE_OUT_DESCRIPTION)


class GenerateResponse(GenerationEnd):
    text: str = Field(description="the generated characters, without the prime")
    prime: str = Field(
        description="the prime as the network read it (unknown chars dropped or replaced)"
    )
    logprobs: Logprobs | None = Field(None, description="with logprobs: one per char of text")


class ScoreRequest(BaseModel):
    """A text to score: how surprising each of its characters is to the model."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "To be, or not to be"}]}
    )

    model: str | None = Field(None, description="which served model; default: the default")
    text: str = Field(
        description="at least two characters (one after a `state`); at most MAX_SCORE_CHARS"
    )
    top_n: int = Field(
        0, ge=0, le=MAX_LOGPROBS, description="also the n likeliest chars at each position"
    )
    skip_unknown: bool = Field(
        False,
        description="drop characters the model does not know (counted in oov_chars) "
        "instead of an error, as `python -m training eval` does",
    )
    state: str | None = Field(None, description=STATE_DESCRIPTION)
    return_state: bool = Field(False, description=RETURN_STATE_DESCRIPTION)


class ScoreResponse(BaseModel):
    model: str
    text: str = Field(description="the text as the model read it")
    chars: int = Field(description="characters predicted: all but the first (all after a state)")
    oov_chars: int = Field(description="characters left out (skip_unknown)")
    nats: float = Field(description="total surprisal in nats (natural log)")
    bits: float = Field(description="total surprisal in bits")
    nats_per_char: float
    bits_per_char: float
    perplexity: float
    logprobs: list[float | None] = Field(
        description="each character's log-probability given all before it (nats); null "
        "for the first (unless the text continues a `state`)"
    )
    surprisal_bits: list[float | None] = Field(description="-logprob in bits, per character")
    top_chars: list[list[str]] | None = Field(
        None, description="with top_n: the likeliest characters at each position ([] first)"
    )
    top_logprobs: list[list[float]] | None = Field(None, description="with top_n: theirs")
    seconds: float
    state: str | None = Field(None, description=STATE_OUT_DESCRIPTION)


class NetworkConfig(BaseModel):
    cell: str
    hidden_size: int
    num_layers: int
    dropout: float
    vocab_size: int


class TrainingInfo(BaseModel):
    """What the trainer recorded in the checkpoint; None where it recorded nothing."""

    val_loss: float | None = None
    val_bits_per_char: float | None = None
    corpus: str | None = None
    corpus_chars: int | None = None
    step: int | None = None


class ChatTemplateInfo(BaseModel):
    """How POST /v1/chat/completions writes a conversation for this model."""

    template: str = Field(description="Jinja, as Hugging Face's chat templates")
    stop: list[str] = Field(description="where a reply ends when a request gives no stop")
    source: Literal["checkpoint", "default"] = Field(
        description="checkpoint: the checkpoint's own; default: the plain one (docs/service.md)"
    )
    problem: str | None = Field(
        None, description="why the checkpoint's template cannot be used (chat requests fail)"
    )


class ModelInfo(BaseModel):
    name: str
    checkpoint: str = Field(description="the checkpoint's file name")
    device: str
    parameters: int
    config: NetworkConfig
    vocabulary: list[str] = Field(description="the characters the model knows, in id order")
    newlines: str = Field(description="lf: CRLF and CR in a prime read as LF; keep: as sent")
    training: TrainingInfo
    limits: Limits
    chat_template: ChatTemplateInfo | None = Field(
        None, description="how chat requests are written for this model"
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    problems: dict[str, str] = Field(
        {}, description="model files that failed to load (an older version may serve)"
    )


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


class ReloadReport(BaseModel):
    models: list[str] = Field(description="every model the service knows")
    reloaded: list[str] = Field(description="loaded models whose file changed: reloaded")
    problems: dict[str, str] = Field(description="model files that failed to load")


class StreamError(BaseModel):
    """Data of the `error` event when a stream fails after it started."""

    message: str


def describe_model(served: ServedModel, limits: Limits) -> ModelInfo:
    """GET /model's answer for one loaded model."""
    config = served.model.config
    info = served.info
    return ModelInfo(
        name=served.name,
        checkpoint=served.checkpoint_path.name,
        device=str(served.device),
        parameters=sum(p.numel() for p in served.model.parameters()),
        config=NetworkConfig(
            cell=config.cell,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout,
            vocab_size=config.vocab_size,
        ),
        vocabulary=list(served.vocab.chars),
        newlines=served.newlines,
        training=TrainingInfo(
            val_loss=_typed(info.get("val_loss"), float),
            val_bits_per_char=_typed(info.get("val_bits_per_char"), float),
            corpus=_typed(info.get("corpus"), str),
            corpus_chars=_typed(info.get("corpus_chars"), int),
            step=_typed(info.get("step"), int),
        ),
        limits=limits,
        chat_template=chat_template_info(info),
    )


def chat_template_info(info: dict[str, Any]) -> ChatTemplateInfo:
    """The model's chat template as GET /model shows it: the checkpoint's, the plain
    default, or what is wrong with the stored one."""
    try:
        stored = stored_template(info)
    except ChatTemplateError as error:
        return ChatTemplateInfo(template="", stop=[], source="checkpoint", problem=str(error))
    template = stored or PLAIN
    return ChatTemplateInfo(
        template=template.template,
        stop=list(template.stop),
        source="default" if stored is None else "checkpoint",
    )


def _typed(value: Any, kind: type) -> Any:
    """`value` if the trainer stored the expected type (ints count as floats), else None."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is not float and isinstance(value, kind) and not isinstance(value, bool):
        return value
    return None
