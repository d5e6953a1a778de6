"""The state token (model/state.py): what it holds, and every way an untrusted one is
refused with an error naming `state`."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.decoding.params import ParamError
from model.network import CharRNN
from model.state import (
    HEADER,
    STATE_VERSION,
    TAIL_CHARS,
    RecurrentState,
    StateCodec,
    continuation_prime,
    model_fingerprint,
    text_after,
)
from model.vocab import Vocabulary

CHARS = "\n abcdefghij"
HIDDEN, LAYERS = 8, 2


def network(cell: str = "lstm", seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    config = ModelConfig(len(CHARS), HIDDEN, LAYERS, cell=cell)
    return CharRNN(config).eval()


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_text(CHARS)


@pytest.fixture(scope="module")
def codec(vocab) -> StateCodec:
    return StateCodec.for_model(network(), vocab)


def some_state(chars: int = 30, arrays: int = 2, seed: int = 0) -> RecurrentState:
    rng = np.random.default_rng(seed)
    h = np.tanh(rng.standard_normal((LAYERS, HIDDEN))).astype(np.float32)
    c = (3 * rng.standard_normal((LAYERS, HIDDEN))).astype(np.float32)
    tail = rng.integers(0, len(CHARS), min(chars, TAIL_CHARS))
    return RecurrentState((h, c)[:arrays], tail, chars)


def forge(codec: StateCodec, state: RecurrentState, **fields) -> str:
    """A token laid out by hand, with any field replaced (or `extra` bytes appended)."""
    header = HEADER.pack(
        fields.get("version", STATE_VERSION),
        fields.get("fingerprint", codec.fingerprint),
        fields.get("chars", state.chars),
        fields.get("tail_length", len(state.tail)),
    )
    values = np.stack(fields.get("arrays", state.arrays)).astype("<f4").tobytes()
    tail = np.asarray(fields.get("tail", state.tail)).astype(codec.id_dtype).tobytes()
    raw = header + values + tail + fields.get("extra", b"")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_token_round_trips_bit_for_bit(codec):
    state = some_state()
    token = codec.encode(state)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw_bytes = HEADER.size + 2 * LAYERS * HIDDEN * 4 + 30  # 30 one-byte ids
    assert codec.token_bytes(30) == raw_bytes
    assert len(token) == math.ceil(raw_bytes * 4 / 3)
    decoded = codec.decode(token)
    assert decoded.same(state) and decoded.chars == 30 and decoded.last == state.tail[-1]
    assert token == forge(codec, state)  # the layout the module documents
    assert not decoded.same(some_state(seed=1))


def test_a_long_text_keeps_its_last_tail_chars(codec):
    state = some_state(chars=10_000)
    assert len(state.tail) == TAIL_CHARS
    assert len(codec.encode(state)) == codec.max_token_chars
    assert codec.decode(codec.encode(state)).same(state)


def test_states_of_other_cells_hold_h_only(vocab):
    codec = StateCodec.for_model(network("gru"), vocab)
    state = some_state(arrays=1)
    assert codec.state_bytes == LAYERS * HIDDEN * 4
    assert codec.decode(codec.encode(state)).same(state)
    with pytest.raises(ValueError, match="not a state of this model"):
        codec.encode(some_state(arrays=2))


def test_the_fingerprint_is_the_weights_and_the_vocabulary(vocab):
    model = network()
    same = CharRNN(model.config)
    same.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    assert StateCodec.for_model(same, vocab) == StateCodec.for_model(model, vocab)
    nudged = {k: v.clone() for k, v in model.state_dict().items()}
    nudged["head.bias"][0] = torch.nextafter(nudged["head.bias"][0], torch.tensor(1.0))
    fingerprint = model_fingerprint(model.config, vocab, model.state_dict())
    assert model_fingerprint(model.config, vocab, nudged) != fingerprint
    other_vocab = Vocabulary(tuple(reversed(CHARS)))
    assert model_fingerprint(model.config, other_vocab, model.state_dict()) != fingerprint
    with pytest.raises(ValueError, match="vocabulary"):
        StateCodec.for_model(model, Vocabulary.from_text("ab"))


def test_continuation_prime_starts_with_the_last_character(vocab):
    state = some_state()
    assert continuation_prime(state, vocab, "") == (state.last,)
    assert continuation_prime(state, vocab, "a\r\nb") == (state.last, *vocab.encode("a\nb"))
    assert continuation_prime(state, vocab, "aZb", skip_unknown=True) == (
        state.last,
        *vocab.encode("ab"),
    )
    with pytest.raises(ParamError) as error:
        continuation_prime(state, vocab, "aZ")
    assert error.value.field == "prime" and "'Z'" in error.value.message


def state_of(vocab: Vocabulary, text: str) -> RecurrentState:
    """A state whose text is `text` (its arrays do not matter here)."""
    ids = vocab.encode(text)
    return RecurrentState(some_state().arrays, ids[-TAIL_CHARS:], len(ids))


def test_text_after_is_what_follows_the_states_text(vocab):
    state = state_of(vocab, "abc\nde")
    assert text_after(state, vocab, "abc\nde fg") == " fg"
    assert text_after(state, vocab, "abc\r\nde\r\nf") == "\nf"  # read as a prime is read
    assert text_after(state, vocab, "abc\nde") == ""
    assert text_after(state, vocab, "aZbc\nde f", skip_unknown=True) == " f"
    assert text_after(state, vocab, "abc\ndeZ f") == "Z f"  # the prime's own error, later
    for other in ("abc\nd", "abc de f", "xbc\nde f", "aZbc\nde f", ""):
        assert text_after(state, vocab, other) is None, other


def test_text_after_compares_the_kept_tail_only(vocab):
    long = "abcdefghij " * 300  # 3,300 characters: the state keeps the last TAIL_CHARS
    state = state_of(vocab, long)
    assert text_after(state, vocab, "j" + long[1:] + "ab") == "ab"
    assert text_after(state, vocab, long[:-1] + "a" + "ab") is None


def test_history_is_the_tail_then_the_prime():
    state = some_state(chars=5)
    prime = state.prime((1, 2))
    assert state.history(prime).tolist() == [*state.tail.tolist(), 1, 2]


@pytest.mark.parametrize(
    ("arrays", "tail", "chars", "message"),
    [
        ((), [1], 1, "arrays"),
        ((np.zeros((2, 3)), np.zeros((2, 4))), [1], 1, "arrays"),
        ((np.zeros((2, 3)),), [], 0, "tail"),
        ((np.zeros((2, 3)),), [1, 2], 5, "tail of 2"),
        ((np.zeros((2, 3)),), [1] * (TAIL_CHARS + 1), TAIL_CHARS + 1, "tail"),
    ],
)
def test_a_malformed_state_is_refused(arrays, tail, chars, message):
    with pytest.raises(ValueError, match=message):
        RecurrentState(arrays, np.array(tail), chars)


def test_a_state_is_read_only():
    state = some_state()
    with pytest.raises(ValueError):
        state.arrays[0][0, 0] = 1.0
    with pytest.raises(ValueError):
        state.tail[0] = 1


def hostile_tokens(codec: StateCodec) -> list[tuple[object, str, str]]:
    """(token, what the error says, its kind)."""
    state = some_state()
    h, c = state.arrays
    nan_c = c.copy()
    nan_c[1, 3] = np.nan
    inf_h = h.copy()
    inf_h[0, 0] = -np.inf
    big_h = h.copy()
    big_h[1, 7] = 1.5
    big_c = c.copy()
    big_c[0, 2] = -2.0 * state.chars - 1
    valid = codec.encode(state)
    other = StateCodec.for_model(network(seed=1), Vocabulary.from_text(CHARS))
    return [
        (None, "a string", "state_format"),
        (valid.encode(), "a string", "state_format"),
        (12, "a string", "state_format"),
        ("A" * (codec.max_token_chars + 4), "at most", "state_format"),
        (valid[:-4] + "+/==", "base64", "state_format"),
        (valid[:10] + " " + valid[11:], "base64", "state_format"),
        ("é" * 8, "base64", "state_format"),
        (valid[:-2], "base64", "state_format"),  # a length no base64 has (4k + 1)
        ("", "truncated", "state_size"),
        (valid[:20], "truncated", "state_size"),
        (valid[:-8], "bytes", "state_size"),
        (forge(codec, state, extra=b"\0\0\0"), "bytes", "state_size"),
        (forge(codec, state, version=2), "version 2", "state_version"),
        (forge(codec, state, version=0), "version 0", "state_version"),
        (other.encode(state), "another model", "state_model"),
        (forge(codec, state, chars=0, tail_length=0, tail=[]), "tail", "state_size"),
        (forge(codec, state, chars=31), "tail of 30", "state_size"),
        (forge(codec, state, chars=2**64 - 1), "tail", "state_size"),
        (forge(codec, state, tail_length=2**16 - 1), "tail", "state_size"),
        (forge(codec, state, arrays=(h, nan_c)), "NaN", "state_values"),
        (forge(codec, state, arrays=(inf_h, c)), "NaN", "state_values"),
        (forge(codec, state, arrays=(big_h, c)), "hidden values", "state_values"),
        (forge(codec, state, arrays=(h, big_c)), "30 characters", "state_values"),
        (forge(codec, state, tail=[*state.tail[:-1], len(CHARS)]), "ids", "state_values"),
        (forge(codec, state, tail=[*state.tail[:-1], 255]), "ids", "state_values"),
    ]


def test_hostile_tokens_are_refused_naming_state(codec):
    for token, fragment, kind in hostile_tokens(codec):
        with pytest.raises(ParamError) as error:
            codec.decode(token)
        assert error.value.field == "state", token
        assert fragment in error.value.message, (token, error.value.message)
        assert error.value.kind == kind, (token, error.value.kind)
        assert "\n" not in str(error.value)


def test_a_cell_value_within_the_bound_is_accepted(codec):
    state = some_state(chars=3)
    h, c = state.arrays
    edge = c.copy()
    edge[:] = 0.0
    edge[1, 1] = -6.0  # 2 × 3 characters: the bound itself
    assert codec.decode(forge(codec, state, arrays=(h, edge))).arrays[1][1, 1] == -6.0
