"""A request that continues a text from its state (model/state.py) gives exactly what the
whole text as prime gives: the same characters, log-probabilities and final state, bit for
bit, turn after turn, alone or forked into several rows beside other requests."""

from __future__ import annotations

import numpy as np
import pytest

from model.decoding.decoder import BatchDecoder
from model.decoding.generate import SingleStream
from model.decoding.output import RowOutput
from model.decoding.params import MAX_REPEAT_LAST_N, GenerationParams
from model.decoding.regex import RegexLimits, compile_regex
from model.decoding.sampler import FAILURES, FINISHED_REGEX_STOP, RUNNING
from model.state import TAIL_CHARS, RecurrentState, StateCodec
from tests.logprobs import same_logprobs

BACKENDS = ["kernel", "torch"]


def turns(vocab, opening: int) -> list[tuple[tuple[int, ...], dict]]:
    """A story's turns: (the new text's ids, the request's settings), the first `opening`
    characters long."""
    ids = vocab.encode
    rng = np.random.default_rng(5)
    return [
        (tuple(rng.integers(0, len(vocab), opening).tolist()), {"length": 40}),
        (  # a repetition window reaching back over the whole tail
            tuple(ids(" the cat")),
            {
                "length": 60,
                "repetition_penalty": 1.5,
                "repeat_last_n": MAX_REPEAT_LAST_N,
                "logprobs": 2,
                "prompt_logprobs": True,
            },
        ),
        ((), {"length": 30, "stop": (tuple(ids("a")),), "temperature": 0.8, "top_k": 6}),
        (tuple(ids("be")), {"length": 0}),
        (
            (),
            {
                "length": 25,
                "frequency_penalty": 0.7,
                "presence_penalty": 0.4,
                "repetition_penalty": 1.2,
                "repeat_last_n": 9,
                "regex": compile_regex("[a-h ]+", vocab, RegexLimits()),
            },
        ),
        (tuple(ids("go ")), {"length": 50, "top_p": 0.9, "min_p": 0.05, "logprobs": 0}),
        # Regexes that a draw ends at an accepting state, writing nothing: first, then later.
        ((), {"length": 20, "regex": compile_regex("b*", vocab, RegexLimits())}),
        (tuple(ids("q")), {"length": 20, "regex": compile_regex("a+", vocab, RegexLimits())}),
        ((), {"length": 30}),
    ]


def decode(model, params, backend, state=None) -> tuple[RowOutput, RecurrentState]:
    """The request alone: its output and its final state."""
    stream = SingleStream(model, params, backend=backend, state=state)
    for _ in stream:
        pass
    final = stream.final_state()
    assert stream.final_state() is final  # taken once: the last character is read once
    if params.regex is not None:
        ended = stream.decoder.sampler.out.status[stream.row] == FINISHED_REGEX_STOP
        decode.regex_stops.append((ended, len(stream.output.ids)))
    return stream.output, final


decode.regex_stops = []  # (ended writing nothing, characters written) of regex requests


def same_output(ours: RowOutput, whole: RowOutput, count: int, new: int) -> None:
    """Equal outputs; ours has the prompt logprobs of the new text only (the last `new`)."""
    assert ours.ids == whole.ids
    assert ours.released == whole.released
    assert ours.finish_reason == whole.finish_reason
    assert ours.regex_complete == whole.regex_complete
    assert same_logprobs(ours.logprobs.read(count), whole.logprobs.read(count))
    known = len(whole.prompt_logprobs)
    tail = whole.prompt_logprobs.slice(known - new, known, count)
    assert same_logprobs(ours.prompt_logprobs.read(count), tail)


# The kernel's story is longer than a state's tail, so a window of MAX_REPEAT_LAST_N reads
# only the tail; torch steps a prime a forward call a character (slow): a short story.
@pytest.mark.parametrize(("backend", "opening"), [("kernel", TAIL_CHARS + 300), ("torch", 50)])
def test_turns_from_states_equal_the_whole_text_as_prime(model, vocab, backend, opening):
    codec = StateCodec.for_model(model, vocab)
    text: list[int] = []
    state = None
    ignored_differs = False
    decode.regex_stops.clear()
    for n, (new, settings) in enumerate(turns(vocab, opening)):
        seed = 100 + n
        whole, whole_state = decode(
            model, GenerationParams(prime=(*text, *new), seed=seed, **settings), backend
        )
        if state is None:
            ours, ours_state = whole, whole_state
        else:
            state = codec.decode(codec.encode(state))  # as a client sends it back
            params = GenerationParams(prime=state.prime(new), seed=seed, **settings)
            ours, ours_state = decode(model, params, backend, state)
            same_output(ours, whole, settings.get("logprobs") or 0, len(new))
            # A decoder that ignored the state would not pass: it gives other text.
            fresh, _ = decode(model, params, backend)
            ignored_differs |= fresh.ids != ours.ids
        text = [*text, *new, *ours.ids]
        assert ours_state.same(whole_state)
        assert codec.encode(ours_state) == codec.encode(whole_state)
        assert ours_state.chars == len(text) and ours_state.last == text[-1]
        assert ours_state.tail.tolist() == text[-TAIL_CHARS:]
        state = ours_state
    assert ignored_differs
    # The story has a regex that ended at its start, writing nothing, and one that ended
    # after some characters (their last one read while the row ran, not at its end).
    stops = set(decode.regex_stops)
    assert (True, 0) in stops and any(ended and chars for ended, chars in stops)


def serve_states(decoder, requests, prefill_rows=2):
    """Run (params, state) requests through `decoder` as the engine does; → each one's
    output and final state (taken before its row is freed)."""
    outputs = [RowOutput() for _ in requests]
    states: list[RecurrentState | None] = [None] * len(requests)
    names = {decoder.add(params, n, state): n for n, (params, state) in enumerate(requests)}

    def end(row: int) -> None:
        states[names[row]] = decoder.final_state(row, outputs[names[row]])
        decoder.remove(row)
        del names[row]

    while names:
        for row in decoder.step().tolist():
            status = decoder.record(row, outputs[names[row]])
            assert status not in FAILURES
            if status != RUNNING:
                end(row)
        _, _, done = decoder.prefill(prefill_rows)
        for row in done:
            if decoder.params[row].length == 0:
                decoder.finish_unsampled(row, outputs[names[row]])
                end(row)
    return outputs, states


@pytest.mark.parametrize("backend", BACKENDS)
def test_n_forks_of_one_state_beside_other_requests(model, vocab, backend):
    text = vocab.encode("the cat sat on the mat and ")
    first, state = decode(model, GenerationParams(prime=tuple(text), length=30, seed=1), backend)
    text += first.ids
    new = tuple(vocab.encode(" then"))
    settings = {"length": 40, "repetition_penalty": 1.3, "repeat_last_n": 16, "logprobs": 1}
    forks = [GenerationParams(prime=state.prime(new), seed=10 + n, **settings) for n in range(3)]
    others = [
        GenerationParams(prime=tuple(vocab.encode("bad")), length=35, seed=7),
        GenerationParams(prime=state.prime(new), length=0, seed=8),  # same ids, no state
    ]
    zero = GenerationParams(prime=state.prime(new), length=0, seed=9)
    requests = [(forks[0], state), (others[0], None), (forks[1], state), (others[1], None)]
    requests += [(forks[2], state), (zero, state)]
    decoder = BatchDecoder(model, 4, backend=backend, block_steps=3, prime_cache_bytes=1 << 20)
    # Four rows for six requests: the last two take rows the first four freed.
    outputs, states = [], []
    for part in (requests[:4], requests[4:]):
        done = serve_states(decoder, part)
        outputs += done[0]
        states += done[1]
    for n, index in enumerate((0, 2, 4)):
        whole, whole_state = decode(
            model, GenerationParams(prime=(*text, *new), seed=10 + n, **settings), backend
        )
        same_output(outputs[index], whole, 1, len(new))
        assert states[index].same(whole_state)
    assert len({tuple(outputs[index].ids) for index in (0, 2, 4)}) == 3  # forks, not copies
    for index in (1, 3):
        alone, alone_state = decode(model, requests[index][0], backend)
        assert outputs[index].ids == alone.ids and states[index].same(alone_state)
    _, whole_zero = decode(model, GenerationParams(prime=(*text, *new), length=0, seed=9), backend)
    assert states[5].same(whole_zero) and outputs[5].ids == []
    assert decoder.free == 4


def test_a_state_never_meets_the_prime_cache(model, vocab):
    """The cache holds states after primes read from zeros: a row with a state neither
    takes a cached entry for its prime's ids nor leaves its own for a row without one."""
    _, state = decode(model, GenerationParams(prime=(3, 4, 5), length=20, seed=2), "kernel")
    prime = state.prime((6, 7))
    stated = GenerationParams(prime=prime, length=20, seed=3)
    for order in ((None, state), (state, None)):
        decoder = BatchDecoder(model, 2, prime_cache_bytes=1 << 20)
        for given in order:
            hits = decoder.cache.hits
            (output,), (final,) = serve_states(decoder, [(stated, given)])
            expected, expected_state = decode(model, stated, "kernel", given)
            assert output.ids == expected.ids and final.same(expected_state)
            assert decoder.cache.hits == hits
        assert len(decoder.cache) == 1  # the row without a state's


def test_a_prime_that_does_not_continue_the_state_is_refused(model):
    _, state = decode(model, GenerationParams(prime=(3, 4), length=5, seed=2), "kernel")
    decoder = BatchDecoder(model, 2)
    other = (state.last + 1) % model.config.vocab_size
    with pytest.raises(ValueError, match="last character"):
        decoder.add(GenerationParams(prime=(other, 1), length=5, seed=0), state=state)
    assert decoder.free == 2
    assert (
        decoder.add(GenerationParams(prime=state.prime((1,)), length=5, seed=0), state=state) == 0
    )


def test_final_state_is_only_for_an_ended_row(model):
    decoder = BatchDecoder(model, 3, block_steps=2)
    rows = [decoder.add(GenerationParams(prime=(1, 2, 3), length=9, seed=n)) for n in range(3)]
    outputs = [RowOutput() for _ in rows]
    with pytest.raises(RuntimeError, match="not finished"):
        decoder.final_state(rows[0], outputs[0])  # prefilling
    while decoder.prefilling:
        decoder.prefill(8)
    decoder.network.logits[rows[1], 0] = np.nan  # its first draw fails
    decoder.step()
    statuses = [decoder.record(row, output) for row, output in zip(rows, outputs, strict=True)]
    assert statuses[0] == RUNNING and statuses[1] in FAILURES
    for row in rows[:2]:
        with pytest.raises(RuntimeError, match="not finished"):
            decoder.final_state(row, outputs[row])  # running, failed
    decoder.remove(rows[1])
    with pytest.raises(IndexError):
        decoder.final_state(rows[1], outputs[1])
