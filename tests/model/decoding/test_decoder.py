import numpy as np
import pytest

from model.decoding.decoder import BatchDecoder
from model.decoding.network_rows import ROWS_PER_THREAD
from model.decoding.output import RowOutput
from model.decoding.params import GenerationParams
from model.decoding.regex import RegexLimits, compile_regex
from model.decoding.sampler import FAILED_NON_FINITE, RUNNING
from tests.logprobs import same_logprobs

BACKENDS = ["kernel", "torch"]
LATE = 250  # steps after which every crowd prime has been prefilled (and cached)


def same_output(ours: RowOutput, expected: RowOutput, count: int | None) -> None:
    assert ours.ids == expected.ids
    assert ours.released == expected.released
    assert ours.finish_reason == expected.finish_reason
    # read out with the request's alternatives; floats compared exactly
    assert same_logprobs(ours.logprobs.read(count or 0), expected.logprobs.read(count or 0))
    assert same_logprobs(
        ours.prompt_logprobs.read(count or 0), expected.prompt_logprobs.read(count or 0)
    )
    assert ours.regex_complete == expected.regex_complete


def crowd(vocab):
    """34 requests with every option, in turn: (name, params, join, cancel)."""
    rng = np.random.default_rng(0)
    shared = tuple(vocab.encode("the cat sat "))  # several requests share this prime
    free_text = compile_regex("[a-h ]+", vocab, RegexLimits())
    branch = compile_regex("(ab|cd)e", vocab, RegexLimits())
    ids = vocab.encode
    options = [
        {},
        {"temperature": 0.7, "top_k": 5},
        {"top_p": 0.8, "min_p": 0.05},
        {"repetition_penalty": 1.5, "repeat_last_n": 8},
        {"frequency_penalty": 0.5, "presence_penalty": 0.5},
        {"logit_bias": ((ids("e")[0], -100.0), (ids("a")[0], 2.0))},
        {"stop": (tuple(ids("a")), tuple(ids("th")))},
        {"logprobs": 3, "prompt_logprobs": True},
        {"regex": free_text, "logprobs": 0},
        {"regex": branch, "logit_bias": ((ids("a")[0], -100.0),)},
        {"temperature": 0.0},
        {"length": 0},
        {  # every option on
            "temperature": 0.9,
            "top_k": 12,
            "top_p": 0.95,
            "min_p": 0.02,
            "repetition_penalty": 1.3,
            "repeat_last_n": 5,
            "frequency_penalty": 0.3,
            "presence_penalty": 0.2,
            "logit_bias": ((ids("b")[0], 1.5), (ids("g")[0], -100.0)),
            "stop": (tuple(ids("ha")), tuple(ids("dd"))),
            "logprobs": 2,
            "regex": free_text,
        },
    ]
    requests = []
    for n in range(34):
        if n % 3 == 0:
            prime = shared
        else:
            prime = tuple(rng.integers(0, len(vocab), int(rng.integers(1, 14))).tolist())
        settings = {"length": int(rng.integers(20, 80)), **options[n % len(options)]}
        params = GenerationParams(prime=prime, seed=1000 + n, **settings)
        # Most join early; the last requests of the shared prime join once it is cached.
        join = int(rng.integers(0, 25)) if n < 27 else LATE + n
        cancel = join + 15 if n % 10 == 4 else None
        requests.append((f"r{n}", params, join, cancel))
    return requests


@pytest.fixture(scope="module")
def alone_outputs(model, vocab, alone):
    """Each crowd request decoded alone (SingleStream), per backend, computed once."""
    cache = {}

    def outputs(backend):
        if backend not in cache:
            cache[backend] = {
                name: alone(model, params, backend) for name, params, *_ in crowd(vocab)
            }
        return cache[backend]

    return outputs


def test_rows_split_over_two_threads_draw_several_characters_a_step_as_alone(model, alone):
    """Each thread's part takes all of a step's characters without waiting for the other's:
    every row's text is still its text alone."""
    requests = [GenerationParams(prime=(1, 2, 3), length=61, seed=n) for n in range(24)]
    decoder = BatchDecoder(model, 24, threads=2, block_steps=8)
    outputs = [RowOutput() for _ in requests]
    rows = [decoder.add(params) for params in requests]
    while decoder.prefilling:
        decoder.prefill(64)
    assert len(decoder.decoding) == 24 >= 2 * ROWS_PER_THREAD  # two parts a step
    steps = 0
    while len(decoder.decoding):
        steps += 1
        for row in decoder.step().tolist():
            if decoder.record(row, outputs[rows.index(row)]) != RUNNING:
                decoder.remove(row)
    assert steps == 8  # 61 characters, 8 a step
    for params, output in zip(requests, outputs, strict=True):
        assert output.ids == alone(model, params, "kernel").ids


@pytest.mark.parametrize(
    ("backend", "threads", "prefill_rows", "cache_bytes", "block_steps", "chars_per_call"),
    [
        ("kernel", 1, 64, 0, 8, None),
        ("kernel", 2, 64, 0, 8, None),
        ("kernel", 2, 64, 0, 1, None),
        ("kernel", 1, 1, 0, 3, None),
        ("kernel", 2, 1, 1 << 20, 8, None),
        ("kernel", 1, 5, 1 << 20, 1, None),
        ("kernel", 2, 64, 1 << 20, 3, None),
        ("torch", 1, 64, 0, 8, None),
        ("torch", 1, 1, 1 << 20, 1, None),
        ("torch", 1, 64, 1 << 20, 3, None),
        ("kernel", 2, 64, 1 << 20, 32, 96),  # 32 steps a call at 3 rows or less, 1 at 96
        ("torch", 1, 64, 0, 16, 40),
    ],
)
def test_a_seeded_request_gives_the_same_output_alone_and_in_a_crowd(
    model,
    vocab,
    serve,
    alone_outputs,
    backend,
    threads,
    prefill_rows,
    cache_bytes,
    block_steps,
    chars_per_call,
):
    """34 requests with every option, joining and leaving at different times in different
    slots, prefilled in slices of 1 or many, through the prime cache or not, drawing 1, 3
    or 8 characters a step (3: steps that do not divide a row's block of random numbers),
    or as many as chars_per_call allows (the steps of a call change as rows come and go):
    each one's output (chars, released, logprobs, finish) is bit-identical to its output
    alone (8 a step)."""
    decoder = BatchDecoder(
        model,
        40,
        threads=threads,
        backend=backend,
        prime_cache_bytes=cache_bytes,
        block_steps=block_steps,
        chars_per_call=chars_per_call,
    )

    # Early joins and cancels in characters' time (with more characters a step, fewer
    # steps); the late joins stay late, after every prime is cached.
    def steps(time: int | None) -> int | None:
        return time if time is None or time >= LATE else time // block_steps

    requests = [
        (name, params, steps(join), steps(cancel)) for name, params, join, cancel in crowd(vocab)
    ]
    served = serve(decoder, requests, prefill_rows=prefill_rows)
    expected = alone_outputs(backend)
    assert not served.failures
    for name, params, _, cancel in requests:
        ours = served.outputs[name]
        if cancel is None:
            same_output(ours, expected[name], params.logprobs)
        else:
            assert ours.ids == expected[name].ids[: len(ours.ids)]
    assert len(set(served.slots.values())) > 10  # slots were reused and moved around
    if prefill_rows > 1 and block_steps == 1:  # slices of 1 let only a few rows decode at once
        assert served.peak >= 2 * ROWS_PER_THREAD  # two threads split the step
    finishes = {output.finish_reason for output in served.outputs.values()}
    assert {"length", "stop", "regex"} <= finishes
    if cache_bytes:
        assert decoder.cache.hits >= 2
    assert decoder.size == 0 and decoder.free == 40


def test_a_call_of_more_rows_takes_fewer_steps(model):
    decoder = BatchDecoder(model, 300, block_steps=32, chars_per_call=1024)
    assert [decoder.steps_for(rows) for rows in (1, 32, 33, 64, 128, 256, 300)] == [
        32,
        32,
        31,
        16,
        8,
        4,
        3,
    ]
    assert BatchDecoder(model, 8, block_steps=32, chars_per_call=1).steps_for(8) == 1
    assert BatchDecoder(model, 8, block_steps=5).steps_for(8) == 5  # no aim: every call 5
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chars_per_call must be at least 1"):
            BatchDecoder(model, 8, chars_per_call=bad)


def test_each_call_draws_its_steps_and_no_more(model, alone):
    lengths = [20] * 4 + [100] * 4
    requests = [GenerationParams(prime=(1, 2), length=n, seed=i) for i, n in enumerate(lengths)]
    decoder = BatchDecoder(model, 8, block_steps=32, chars_per_call=64)
    outputs = [RowOutput() for _ in requests]
    rows = [decoder.add(params) for params in requests]
    while decoder.prefilling:
        decoder.prefill(64)
    drawn = []
    while len(decoder.decoding):
        stepped = decoder.step()
        drawn.append((len(stepped), decoder.block.steps))
        for row in stepped.tolist():
            if decoder.record(row, outputs[rows.index(row)]) != RUNNING:
                decoder.remove(row)
    # 8 rows: calls of 64 / 8 steps, the short rows ending in the third; then 4 rows of 16
    # steps for the 76 characters left (the last call ends early).
    assert drawn == [(8, 8)] * 3 + [(4, 16)] * 5
    for params, output in zip(requests, outputs, strict=True):
        assert output.ids == alone(model, params, "kernel").ids


def test_different_seeds_give_different_text(model, alone):
    outputs = [alone(model, GenerationParams(prime=(1,), length=60, seed=s)) for s in (1, 2, 1)]
    assert outputs[0].ids != outputs[1].ids and outputs[0].ids == outputs[2].ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cached_prime_gives_the_same_state_bit_for_bit(model, backend):
    decoder = BatchDecoder(model, 4, backend=backend, prime_cache_bytes=1 << 20)
    prime = (3, 1, 4, 1, 5, 9, 2, 6)
    first = decoder.add(GenerationParams(prime=prime, length=5, seed=1))
    while decoder.prefilling:
        decoder.prefill(64)
    assert (decoder.cache.hits, decoder.cache.misses, len(decoder.cache)) == (0, 1, 1)
    second = decoder.add(GenerationParams(prime=prime, length=5, seed=2))
    assert decoder.cache.hits == 1 and decoder.prefilling == 0
    assert decoder.decoding.tolist() == [first, second]
    one, two = decoder.network.snapshot(first), decoder.network.snapshot(second)
    assert np.array_equal(np.asarray(one.logits), np.asarray(two.logits))
    for a, b in zip(one.state, two.state, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    decoder.add(GenerationParams(prime=prime[:-1], length=5, seed=3))  # a prefix: a miss
    decoder.add(GenerationParams(prime=(0, *prime), length=5, seed=3))  # a suffix: a miss
    assert (decoder.cache.hits, decoder.cache.misses, decoder.prefilling) == (1, 3, 2)


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_length_zero_ends_after_the_prime_cached_or_not(model, serve, cache_bytes):
    decoder = BatchDecoder(model, 4, prime_cache_bytes=cache_bytes)
    prime = (1, 2, 3, 4)
    served = serve(
        decoder,
        [
            ("first", GenerationParams(prime=prime, length=3, seed=1)),
            ("zero", GenerationParams(prime=prime, length=0, seed=1), 10),
        ],
    )
    zero = served.outputs["zero"]
    assert zero.ids == [] and zero.released == 0 and zero.finish_reason == "length"
    assert len(served.outputs["first"].ids) == 3


def prime_chars_left(decoder: BatchDecoder) -> int:
    """Prime characters the decoder's rows have still to read."""
    return sum(len(p) for p in decoder._primes.values()) - int(
        sum(decoder._prime_pos[row] for row in decoder._primes)
    )


def test_prefill_runs_the_shortest_primes_first(model):
    decoder = BatchDecoder(model, 4)
    rows = [decoder.add(GenerationParams(prime=(1,) * n, length=1, seed=0)) for n in (5, 1, 3)]
    assert decoder.prefilling == 3 and prime_chars_left(decoder) == 9
    assert [len(part) for part in decoder.prefill(0)] == [0, 0, 0]
    advanced, positions, done = decoder.prefill(2)
    assert advanced.tolist() == [rows[1], rows[2]] and positions.tolist() == [0, 0]
    assert done == [rows[1]] and decoder.decoding.tolist() == [rows[1]]
    advanced, positions, done = decoder.prefill(2)
    assert advanced.tolist() == [rows[2], rows[0]] and positions.tolist() == [1, 0]
    assert prime_chars_left(decoder) == 5 and done == []
    decoder.remove(rows[2])  # a row leaves mid-prefill
    advanced, positions, done = decoder.prefill(64)
    assert advanced.tolist() == [rows[0]] and positions.tolist() == [1]
    assert prime_chars_left(decoder) == 3


def test_rows_are_added_and_removed_in_any_order(model):
    decoder = BatchDecoder(model, 3)
    params = GenerationParams(prime=(1,), length=50, seed=0)
    a, b, c = (decoder.add(params, owner=name) for name in "abc")
    assert (a, b, c) == (0, 1, 2) and decoder.free == 0 and decoder.owners == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="full"):
        decoder.add(params)
    decoder.remove(b)
    decoder.prefill(64)
    decoder.remove(a)
    assert list(decoder.rows()) == [c] and decoder.decoding.tolist() == [c]
    with pytest.raises(IndexError):
        decoder.remove(a)
    assert decoder.add(params) == a  # the lowest free slot first
    assert decoder.add(params) == b and decoder.size == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reused_slot_starts_from_a_reset_state(model, alone, backend):
    decoder = BatchDecoder(model, 2, backend=backend)
    other = GenerationParams(prime=(9, 9, 9), length=20, seed=5, stop=((1, 1),), logprobs=2)
    row = decoder.add(other)
    for _ in range(8):
        decoder.prefill(64)
        decoder.step()
    decoder.remove(row)
    params = GenerationParams(prime=(4, 2), length=30, seed=7, frequency_penalty=1.0)
    assert decoder.add(params) == row
    output = RowOutput()
    while decoder.prefilling:
        decoder.prefill(64)
    while decoder.record(row, output) == RUNNING if decoder.step().size else False:
        pass
    assert output.ids == alone(model, params, backend).ids


@pytest.mark.parametrize(
    "changes",
    [
        {"prime": (23,)},
        {"prime": (1, -1)},
        {"prime": (0, 10**9)},
        {"logit_bias": ((23, 1.0),)},
        {"logit_bias": ((-1, -100.0),)},
        {"stop": ((1, 23),)},
        {"stop": ((-5,),)},
    ],
)
def test_ids_outside_the_vocabulary_are_refused_at_add(model, changes):
    decoder = BatchDecoder(model, 2)
    with pytest.raises(ValueError, match="vocab"):
        decoder.add(GenerationParams(**{"prime": (1,), "length": 5, "seed": 0, **changes}))
    assert decoder.free == 2 and decoder.size == 0
    assert decoder.add(GenerationParams(prime=(1,), length=5, seed=0)) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_logits_fail_one_row_and_spare_the_others(model, alone, backend):
    decoder = BatchDecoder(model, 3, backend=backend)
    params = [GenerationParams(prime=(n + 1,), length=100, seed=n) for n in range(3)]
    rows = [decoder.add(request) for request in params]
    while decoder.prefilling:
        decoder.prefill(64)
    decoder.network.logits[rows[1], 4] = np.nan
    outputs = [RowOutput() for _ in rows]
    decoder.step()
    statuses = [decoder.record(row, output) for row, output in zip(rows, outputs, strict=True)]
    assert statuses == [RUNNING, FAILED_NON_FINITE, RUNNING] and outputs[1].ids == []
    decoder.remove(rows[1])
    for _ in range(30):
        if decoder.step().size == 0:
            break
        for row in decoder.decoding.tolist():
            if decoder.record(row, outputs[row]) != RUNNING:
                decoder.remove(row)
    for n in (0, 2):
        assert outputs[n].ids == alone(model, params[n], backend).ids


def test_backend_choice(model, make_model):
    assert BatchDecoder(model, 1).backend == "kernel"
    assert BatchDecoder(model, 1, backend="torch").backend == "torch"
    gru = make_model(cell="gru", hidden_size=8)
    assert BatchDecoder(gru, 1).backend == "torch"
    with pytest.raises(ValueError, match="backend"):
        BatchDecoder(model, 1, backend="fast")
    with pytest.raises(ValueError, match="float32 LSTM"):
        BatchDecoder(gru, 1, backend="kernel")
    with pytest.raises(ValueError, match="capacity"):
        BatchDecoder(model, 0)


@pytest.mark.parametrize("block_steps", [0, -1, 65])
def test_block_steps_is_bounded_by_a_rows_block_of_random_numbers(model, block_steps):
    with pytest.raises(ValueError, match=r"block_steps must be in \[1, 64\]"):
        BatchDecoder(model, capacity=2, block_steps=block_steps)
