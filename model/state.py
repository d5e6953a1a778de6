"""The recurrent state as a token a client keeps: everything a text has told the network, in
a few KB whatever the text's length, so a later request continues (or forks) the text on any
replica without sending it again.

    generation or scoring ──decoder.final_state / scorer.final_state──▶ RecurrentState
    RecurrentState ──codec.encode──▶ token (URL-safe base64) ──client──▶ codec.decode
                   ──▶ decoder.add(params, state=...) / Scorer(..., state=...)

A state is the network's state after the text's last character, and that text's last
characters. A request that continues it gives `state.prime(ids)` as its prime: the text's
last character, which the state has read already (its logits come from the state through
the output layer, the decoding step's own product), then the new text, read as any prime.
Every number is the one the whole text as prime computes, so the continuation is the same
bit for bit.

The token, little-endian (v1):

    offset  size        field
    0       1           format version (STATE_VERSION)
    1       16          the model's fingerprint (model_fingerprint)
    17      8           chars: characters of text the state covers (u64)
    25      2           n: characters of its tail (u16), min(chars, TAIL_CHARS)
    27      4·A·L·H     the state after the text, float32: h of every layer, then c
                        (LSTM; A = 2) or h only (GRU, RNN; A = 1)
    ...     n·w         the text's last n character ids, the last character last (w: the
                        vocabulary's id width, 1 byte up to 256 characters)

The tail is what the repetition penalty reads (the last repeat_last_n characters, up to
MAX_REPEAT_LAST_N): nothing else a sampler chain carries depends on the text before a
request (the random stream starts at its seed, frequency/presence counts and stop strings
look at its own output only). For the shipped model (2 × 256 LSTM, 71 characters) a token
holds 27 + 4,096 + n bytes: 5,500 to 8,228 characters of base64.

A token is untrusted input: `decode` checks its form, version, model, size, values and ids
and raises ParamError("state") naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.config import ModelConfig
from model.decoding.params import MAX_REPEAT_LAST_N, ParamError, encode_prime
from model.network import CharRNN
from model.text import NEWLINES_LF, as_read
from model.vocab import OutOfVocabularyError, Vocabulary

STATE_VERSION = 1
TAIL_CHARS = MAX_REPEAT_LAST_N  # the longest window a repetition penalty reads
FINGERPRINT_BYTES = 16
HEADER = struct.Struct("<B16sQH")  # version, fingerprint, chars, tail length
MAX_CHARS = 2**53  # characters a state may claim to cover (exact as a float64)
# |h| ≤ 1 for every cell (o·tanh(c), or a mix of tanh values); the compiled gate maths'
# tanh is within 4e-7 of the exact one and may exceed 1 by that much.
HIDDEN_LIMIT = 1.0 + 1e-6
# |c| grows by at most 1 a character (c' = f·c + i·g with f, i ∈ [0, 1], g ∈ [-1, 1]); a
# state may hold up to CELL_PER_CHAR × its characters, twice that bound for rounding.
CELL_PER_CHAR = 2.0
_TOKEN = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, eq=False)
class RecurrentState:
    """A text as the network has read it: its state after the last character, and the
    text's last characters (the last one last)."""

    arrays: tuple[np.ndarray, ...]  # (h, c) for an LSTM, (h,) otherwise; each (L, H) float32
    tail: np.ndarray  # (n,) int64, 1 ≤ n ≤ TAIL_CHARS: the text's last n character ids
    chars: int  # characters of the text (≥ n)

    def __post_init__(self) -> None:
        arrays = tuple(np.array(a, np.float32) for a in self.arrays)  # own read-only copies
        tail = np.array(self.tail, np.int64).reshape(-1)
        if not 1 <= len(arrays) <= 2 or any(
            a.ndim != 2 or a.shape != arrays[0].shape for a in arrays
        ):
            raise ValueError("a state's arrays are one to two (layers, hidden) arrays")
        if not 1 <= len(tail) <= TAIL_CHARS:
            raise ValueError(f"a state's tail has 1 to {TAIL_CHARS} characters")
        if len(tail) != min(self.chars, TAIL_CHARS):
            raise ValueError(f"a tail of {len(tail)} characters for a text of {self.chars}")
        for array in (*arrays, tail):
            array.setflags(write=False)
        object.__setattr__(self, "arrays", arrays)
        object.__setattr__(self, "tail", tail)

    @property
    def last(self) -> int:
        """The text's last character."""
        return int(self.tail[-1])

    def prime(self, ids: Sequence[int] = ()) -> tuple[int, ...]:
        """The prime of a request that continues this text with `ids` (may be empty): the
        last character (read already: where the text stands), then them."""
        return (self.last, *ids)

    def history(self, prime: Sequence[int]) -> np.ndarray:
        """The text's tail followed by a continuation's prime (which starts with the last
        character): what a sampler's repetition window reads, (n - 1 + len(prime),)."""
        return np.concatenate([self.tail[:-1], np.asarray(prime, np.int64)])

    def same(self, other: RecurrentState) -> bool:
        """The same state bit for bit."""
        return (
            self.chars == other.chars
            and np.array_equal(self.tail, other.tail)
            and len(self.arrays) == len(other.arrays)
            and all(
                a.tobytes() == b.tobytes() for a, b in zip(self.arrays, other.arrays, strict=True)
            )
        )


def text_state(
    arrays: Sequence[np.ndarray],
    before: RecurrentState | None,
    prime: Sequence[int],
    written: Sequence[int],
) -> RecurrentState:
    """The state after a request: `arrays` the network's state after its whole text
    (`before`'s text, if it continued one, then its prime without the repeated character,
    then `written`)."""
    base = np.asarray(prime, np.int64) if before is None else before.history(prime)
    chars = len(prime) if before is None else before.chars - 1 + len(prime)
    text = np.concatenate([base, np.asarray(written, np.int64)])
    return RecurrentState(tuple(arrays), text[-TAIL_CHARS:], chars + len(written))


def model_fingerprint(
    config: ModelConfig, vocab: Vocabulary, weights: Mapping[str, torch.Tensor]
) -> bytes:
    """FINGERPRINT_BYTES of SHA-256 over the config, the vocabulary and every weight (by
    name, as float32): equal for every replica that loads the same checkpoint."""
    digest = hashlib.sha256(b"charrnn-state\0")
    described = {"config": config.to_json(), "vocab": vocab.to_json()}
    digest.update(json.dumps(described, sort_keys=True, ensure_ascii=False).encode())
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"\0{name}{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.numpy().astype("<f4", copy=False).tobytes())
    return digest.digest()[:FINGERPRINT_BYTES]


@dataclass(frozen=True)
class StateCodec:
    """Tokens of one model's states: made once per loaded model (`for_model` hashes its
    weights), then `encode` and `decode` cost microseconds."""

    fingerprint: bytes
    cell: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    id_dtype: np.dtype

    def __post_init__(self) -> None:
        if len(self.fingerprint) != FINGERPRINT_BYTES:
            raise ValueError(f"a fingerprint has {FINGERPRINT_BYTES} bytes")

    @classmethod
    def for_model(cls, model: CharRNN, vocab: Vocabulary) -> StateCodec:
        config = model.config
        if config.vocab_size != len(vocab):
            raise ValueError("the vocabulary does not fit the model")
        fingerprint = model_fingerprint(config, vocab, model.state_dict())
        return cls(
            fingerprint,
            config.cell,
            config.num_layers,
            config.hidden_size,
            config.vocab_size,
            vocab.id_dtype,
        )

    @property
    def array_count(self) -> int:
        return 2 if self.cell == "lstm" else 1

    @property
    def state_bytes(self) -> int:
        """Bytes of the float32 state: h (and c) of every layer."""
        return 4 * self.array_count * self.num_layers * self.hidden_size

    def token_bytes(self, tail: int) -> int:
        """Bytes of a token whose tail has `tail` characters (before base64)."""
        return HEADER.size + self.state_bytes + tail * self.id_dtype.itemsize

    @property
    def max_token_chars(self) -> int:
        """The longest token of this model, in base64 characters (unpadded)."""
        return math.ceil(self.token_bytes(TAIL_CHARS) * 4 / 3)

    def encode(self, state: RecurrentState) -> str:
        shape = (self.num_layers, self.hidden_size)
        if len(state.arrays) != self.array_count or state.arrays[0].shape != shape:
            raise ValueError(f"not a state of this model: {len(state.arrays)} × {shape} expected")
        header = HEADER.pack(STATE_VERSION, self.fingerprint, state.chars, len(state.tail))
        body = b"".join(a.astype("<f4", copy=False).tobytes() for a in state.arrays)
        tail = state.tail.astype(self.id_dtype.newbyteorder("<")).tobytes()
        return base64.urlsafe_b64encode(header + body + tail).rstrip(b"=").decode("ascii")

    def decode(self, token: object) -> RecurrentState:
        """The state a token holds, after checking everything in it. Raises ParamError
        ("state") saying what is wrong: not a token, another format version, another
        model, the wrong size, values no network of this shape can hold."""
        raw = self._bytes(token)
        if len(raw) < HEADER.size:
            raise _error(f"truncated: {len(raw)} bytes, a state has at least {HEADER.size}")
        version, fingerprint, chars, tail = HEADER.unpack_from(raw)
        if version != STATE_VERSION:
            raise _error(
                f"format version {version} is not supported (this server reads version "
                f"{STATE_VERSION})",
                "state_version",
            )
        if fingerprint != self.fingerprint:
            raise _error(
                f"made by another model (fingerprint {fingerprint.hex()[:12]}, this model's "
                f"is {self.fingerprint.hex()[:12]})",
                "state_model",
            )
        if not 1 <= chars <= MAX_CHARS or tail != min(chars, TAIL_CHARS):
            raise _error(f"a tail of {tail} characters does not fit a text of {chars}")
        if len(raw) != self.token_bytes(tail):
            raise _error(
                f"{len(raw)} bytes; a state of this model with a tail of {tail} characters "
                f"has {self.token_bytes(tail)}"
            )
        shape = (self.array_count, self.num_layers, self.hidden_size)
        values = np.frombuffer(raw, "<f4", math.prod(shape), HEADER.size).reshape(shape)
        ids = np.frombuffer(
            raw, self.id_dtype.newbyteorder("<"), tail, HEADER.size + self.state_bytes
        )
        _check_values(values, chars)
        if ids.max() >= self.vocab_size:
            raise _error(f"character ids beyond this model's {self.vocab_size}", "state_values")
        return RecurrentState(tuple(values.astype(np.float32)), ids.astype(np.int64), chars)

    def _bytes(self, token: object) -> bytes:
        if not isinstance(token, str):
            raise _error(f"a state token is a string, got {type(token).__name__}", "state_format")
        if len(token) > self.max_token_chars:
            raise _error(
                f"{len(token)} characters; a state of this model has at most "
                f"{self.max_token_chars}",
                "state_format",
            )
        if not _TOKEN.fullmatch(token) or len(token) % 4 == 1:
            raise _error("not a state token (URL-safe base64 expected)", "state_format")
        try:
            return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):  # pragma: no cover - the pattern rules it out
            raise _error("not a state token (URL-safe base64 expected)", "state_format") from None


def _check_values(values: np.ndarray, chars: int) -> None:
    """values (A, L, H): h, then c for an LSTM."""
    if not np.isfinite(values).all():
        raise _error("holds NaN or infinite values", "state_values")
    if np.abs(values[0]).max(initial=0.0) > HIDDEN_LIMIT:
        raise _error("hidden values outside [-1, 1], which no cell produces", "state_values")
    if len(values) > 1 and np.abs(values[1]).max(initial=0.0) > CELL_PER_CHAR * chars:
        raise _error(f"cell values beyond what {chars} characters can produce", "state_values")


def continuation_prime(
    state: RecurrentState,
    vocab: Vocabulary,
    text: str,
    *,
    skip_unknown: bool = False,
    newlines: str = NEWLINES_LF,
) -> tuple[int, ...]:
    """The prime of a request that continues `state` with `text` (may be empty: then the
    request continues right after the state's text). Newlines and unknown characters are
    handled as encode_prime does, with its ParamError("prime")."""
    normalized = as_read(text, newlines)
    try:
        ids = vocab.encode(normalized, skip_unknown=skip_unknown)
    except OutOfVocabularyError:
        encode_prime(vocab, text, skip_unknown=skip_unknown, newlines=newlines)  # its error
        raise  # pragma: no cover - encode_prime raised
    return state.prime(ids)


def text_after(
    state: RecurrentState,
    vocab: Vocabulary,
    text: str,
    *,
    skip_unknown: bool = False,
    newlines: str = NEWLINES_LF,
) -> str | None:
    """What follows `state`'s text in `text`, read as a prime is read (newlines, unknown
    characters), if `text` begins with the state's text: its first `state.chars`
    characters end with those the state keeps (the last TAIL_CHARS: a text that differs
    only before those passes). None if it does not."""
    normalized = as_read(text, newlines)
    missing = set(vocab.missing(normalized)) if skip_unknown and vocab.unknown is None else ()
    # Where each character read sits in `normalized` (all of them, unless some are skipped).
    read = [n for n, char in enumerate(normalized) if char not in missing] if missing else None
    count = len(read) if read is not None else len(normalized)
    kept = len(state.tail)
    if count < state.chars:
        return None
    end = read[state.chars - 1] + 1 if read is not None else state.chars
    start = read[state.chars - kept] if read is not None else state.chars - kept
    try:
        ids = vocab.encode(normalized[start:end], skip_unknown=skip_unknown)
    except OutOfVocabularyError:  # a character the state's text cannot hold
        return None
    return normalized[end:] if np.array_equal(np.asarray(ids), state.tail) else None


def _error(message: str, kind: str = "state_size") -> ParamError:
    return ParamError("state", message, kind)
