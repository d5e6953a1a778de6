import numpy as np
import pytest

from model.decoding.automaton import AutomatonPool
from model.decoding.params import MAX_REPEAT_LAST_N, GenerationParams
from model.decoding.sampler import sample_rows
from model.decoding.sampler_rows import UNIFORM_BLOCK, SamplerRows, failure_table

V = 23


def brute_failure(pattern):
    return [
        max((k for k in range(i + 1) if pattern[:k] == pattern[i + 1 - k : i + 1]), default=0)
        for i in range(len(pattern))
    ]


def test_failure_table_against_brute_force():
    rng = np.random.default_rng(0)
    assert failure_table((1, 1, 2)) == [0, 1, 0]
    assert failure_table((1, 2, 1, 2, 1)) == [0, 0, 1, 2, 3]
    for _ in range(300):
        pattern = tuple(rng.integers(0, 3, rng.integers(1, 16)).tolist())
        assert failure_table(pattern) == brute_failure(pattern)


def request(**changes):
    return GenerationParams(**{"prime": (1, 2, 3), "length": 40, "seed": 7, **changes})


def snapshot(sampler, row):
    arrays = (*sampler.settings, *sampler.state, *sampler.out)
    return [array[row].copy() for array in arrays]


def test_assign_writes_the_row_alone():
    sampler = SamplerRows(3, V)
    before = [snapshot(sampler, row) for row in (0, 2)]
    params = request(
        temperature=0.5,
        top_k=4,
        top_p=0.9,
        min_p=0.1,
        repetition_penalty=1.2,
        repeat_last_n=2,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        logit_bias=((4, -100.0), (6, 2.0)),
        stop=((1, 1, 2), (5,)),
        logprobs=3,
    )
    sampler.assign(1, params, np.array([1, 2, 3, 3]), regex_start=9)
    for row, arrays in zip((0, 2), before, strict=True):
        for array, old in zip(snapshot(sampler, row), arrays, strict=True):
            assert np.array_equal(array, old)
    assert (sampler.temperature[1], sampler.top_k[1], sampler.top_p[1]) == (0.5, 4, 0.9)
    assert (sampler.min_p[1], sampler.repetition_penalty[1], sampler.repeat_last_n[1]) == (
        0.1,
        1.2,
        2,
    )
    assert (sampler.frequency_penalty[1], sampler.presence_penalty[1]) == (0.5, -0.5)
    assert sampler.bias[1, [4, 6]].tolist() == [-100, 2] and sampler.bias[1].sum() == -98
    assert sampler.has_bias[1] and sampler.logprobs[1] == 3 and sampler.length[1] == 40
    assert sampler.stop_lengths[1].tolist() == [3, 1, 0, 0]
    assert sampler.stops[1, 0, :3].tolist() == [1, 1, 2] and sampler.stops[1, 1, 0] == 5
    assert sampler.stop_fail[1, 0, :3].tolist() == [0, 1, 0]
    assert sampler.window_counts[1].tolist() == np.bincount([3, 3], minlength=V).tolist()
    assert sampler.ring[1, :4].tolist() == [1, 2, 3, 3] and sampler.pushed[1] == 4
    assert sampler.regex_state[1] == 9 and sampler.positions[1] == 0
    expected = np.random.Generator(np.random.PCG64(7)).random(UNIFORM_BLOCK)
    assert np.array_equal(sampler.uniforms[1], expected)


def test_a_reassigned_row_starts_afresh():
    """A row used by one request, then given to another: no history, stops or bias left."""
    sampler = SamplerRows(1, V)
    pool = AutomatonPool(V)
    used = request(
        stop=((4, 4), (5,), (6,)),
        logit_bias=((3, 5.0),),
        frequency_penalty=1.0,
        repetition_penalty=2.0,
        logprobs=2,
    )
    sampler.assign(0, used, np.array([1, 2, 3]))
    rows = np.array([0])
    for char in (4, 8, 9):
        logits = np.full((1, V), -30, np.float32)
        logits[0, char] = 30
        sample_rows(rows, logits, sampler.settings, sampler.state, pool.tables, sampler.out)
    sampler.release(0)
    assert sampler.generators[0] is None and sampler.regex_state[0] == -1
    sampler.assign(0, request(), np.array([1, 2, 3]))
    fresh = SamplerRows(1, V)
    fresh.assign(0, request(), np.array([1, 2, 3]))
    for name in ("generated", "counts", "window_counts", "kmp", "stop_lengths", "has_bias"):
        assert np.array_equal(getattr(sampler, name), getattr(fresh, name)), name
    assert not sampler.bias.any() and sampler.logprobs[0] == -1
    assert np.array_equal(sampler.uniforms, fresh.uniforms)


@pytest.mark.parametrize(("prime_length", "last_n"), [(3000, MAX_REPEAT_LAST_N), (5, 64), (9, 0)])
def test_window_of_a_long_prime(prime_length, last_n):
    """The ring holds the prime's last 2,048 chars; the window counts its last n."""
    prime = np.random.default_rng(1).integers(0, V, prime_length)
    sampler = SamplerRows(1, V)
    sampler.assign(0, request(repeat_last_n=last_n), prime)
    window = prime[len(prime) - last_n :] if last_n else prime[:0]
    assert np.array_equal(sampler.window_counts[0], np.bincount(window, minlength=V))
    kept = np.arange(max(0, prime_length - MAX_REPEAT_LAST_N), prime_length)
    assert np.array_equal(sampler.ring[0, kept % MAX_REPEAT_LAST_N], prime[kept])
    assert sampler.pushed[0] == prime_length


def test_refill_continues_the_requests_own_random_stream():
    sampler = SamplerRows(3, V)
    for row, seed in enumerate((11, 12, 13)):
        sampler.assign(row, request(seed=seed), np.array([1]))
    sampler.positions[:] = [UNIFORM_BLOCK, 5, UNIFORM_BLOCK]
    unchanged = sampler.uniforms[1].copy()
    sampler.refill(np.array([0, 1]))  # row 2 is not among the rows refilled
    stream = np.random.Generator(np.random.PCG64(11)).random(2 * UNIFORM_BLOCK)
    assert np.array_equal(sampler.uniforms[0], stream[UNIFORM_BLOCK:])
    assert sampler.positions.tolist() == [0, 5, UNIFORM_BLOCK]
    assert np.array_equal(sampler.uniforms[1], unchanged)


def test_arrays_the_chain_takes_are_in_its_order():
    sampler = SamplerRows(2, V)
    assert sampler.settings[0] is sampler.temperature and sampler.settings[14] is sampler.length
    assert sampler.state[0] is sampler.uniforms and sampler.state[8] is sampler.regex_state
    assert sampler.out[0] is sampler.ids and sampler.out[3] is sampler.logprob_records
    assert sampler.bias.shape == (2, V) and sampler.ring.shape == (2, MAX_REPEAT_LAST_N)


def test_topping_up_keeps_a_rows_stream_of_random_numbers():
    """Rows with fewer than `needed` numbers left keep them, moved to the front, and the
    block fills from the same generator: the row reads one stream, however it is cut."""
    sampler = SamplerRows(2, V)
    for row, seed in enumerate((7, 8)):
        sampler.assign(row, request(seed=seed), np.array([1]))
    stream = np.random.Generator(np.random.PCG64(7)).random(3 * UNIFORM_BLOCK)
    sampler.positions[:] = [UNIFORM_BLOCK - 3, UNIFORM_BLOCK - 8]
    untouched = sampler.uniforms[1].copy()
    sampler.refill(np.array([0, 1]), needed=5)  # row 1 still has 8
    assert sampler.positions.tolist() == [0, UNIFORM_BLOCK - 8]
    assert np.array_equal(sampler.uniforms[0], stream[UNIFORM_BLOCK - 3 : 2 * UNIFORM_BLOCK - 3])
    assert np.array_equal(sampler.uniforms[1], untouched)
    sampler.positions[0] = 10
    sampler.refill(np.array([0]), needed=UNIFORM_BLOCK)  # every number wanted: top up now
    start = UNIFORM_BLOCK - 3 + 10
    assert np.array_equal(sampler.uniforms[0], stream[start : start + UNIFORM_BLOCK])
