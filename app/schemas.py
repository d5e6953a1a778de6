"""The HTTP edge: request and response bodies, validated by pydantic.

Limits that depend on the settings (MAX_LENGTH, MAX_PRIME_LENGTH) and on the vocabulary are
checked by TextGenerator.validate, which names the offending field the same way.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from model.sampling import MAX_SEED

# Below this, logits / temperature overflows float32 and sampling fails; top_k=1 is the
# way to ask for greedy output.
MIN_TEMPERATURE = 1e-6


class GenerateRequest(BaseModel):
    """What to generate: the same fields as a JSON body (POST) or query parameters (GET)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"prime": "ROMEO:\n", "length": 200, "temperature": 0.8, "seed": 42}]
        },
    )

    prime: str = Field("", description="text to continue; empty starts a new paragraph")
    length: int | None = Field(
        None,
        ge=1,
        description="characters to generate; default and maximum are the server's "
        "DEFAULT_LENGTH and MAX_LENGTH (see GET /model)",
    )
    temperature: float = Field(
        1.0,
        ge=MIN_TEMPERATURE,
        allow_inf_nan=False,
        description="> 0 (at least 1e-6): below 1 is more conservative, above 1 wilder; "
        "top_k=1 gives greedy output",
    )
    top_k: int | None = Field(None, ge=1, description="sample only from the k likeliest chars")
    top_p: float = Field(
        1.0,
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
    skip_unknown: bool = Field(
        False, description="drop prime characters the model does not know instead of a 422"
    )


class GenerationStats(BaseModel):
    chars: int = Field(description="characters generated")
    seconds: float = Field(description="from the request to its last character, queue included")
    chars_per_second: float
    seed: int = Field(description="the seed used: pass it back to get the same text")
    prime_chars: int = Field(description="characters of the prime the network read")
    model: str = Field(description="name of the checkpoint that generated the text")
    first_char_seconds: float | None = Field(
        None, description="from the request to its first character (queue and prime included)"
    )


class GenerateResponse(BaseModel):
    text: str = Field(description="the generated characters, without the prime")
    prime: str = Field(
        description="the prime as the network read it (unknown chars dropped or replaced)"
    )
    stats: GenerationStats


class Limits(BaseModel):
    """Per-request limits; their defaults live in Settings."""

    model_config = ConfigDict(frozen=True)

    max_length: int = Field(ge=1)
    max_prime_length: int = Field(ge=0)
    default_length: int = Field(ge=1)


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


class ModelInfo(BaseModel):
    name: str
    checkpoint: str = Field(description="path of the checkpoint file")
    device: str
    parameters: int
    config: NetworkConfig
    vocabulary: list[str] = Field(description="the characters the model knows, in id order")
    training: TrainingInfo
    limits: Limits


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class StreamError(BaseModel):
    """Data of the `error` event when a stream fails after it started."""

    message: str
