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
    settings, state = sampler.settings, sampler.state
    for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
        assert getattr(settings, name)[1] == getattr(params, name), name
    for name in ("repeat_last_n", "frequency_penalty", "presence_penalty", "length"):
        assert getattr(settings, name)[1] == getattr(params, name), name
    assert settings.bias[1, [4, 6]].tolist() == [-100, 2] and settings.bias[1].sum() == -98
    assert settings.has_bias[1] and settings.logprobs[1] == 3
    assert settings.stop_lengths[1].tolist() == [3, 1, 0, 0]
    assert settings.stops[1, 0, :3].tolist() == [1, 1, 2] and settings.stops[1, 1, 0] == 5
    assert settings.stop_fail[1, 0, :3].tolist() == [0, 1, 0]
    assert state.window_counts[1].tolist() == np.bincount([3, 3], minlength=V).tolist()
    assert state.ring[1, :4].tolist() == [1, 2, 3, 3] and state.pushed[1] == 4
    assert state.regex_state[1] == 9 and state.positions[1] == 0
    expected = np.random.Generator(np.random.PCG64(7)).random(UNIFORM_BLOCK)
    assert np.array_equal(sampler.state.uniforms[1], expected)


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
    assert sampler.generators[0] is None and sampler.state.regex_state[0] == -1
    sampler.assign(0, request(), np.array([1, 2, 3]))
    fresh = SamplerRows(1, V)
    fresh.assign(0, request(), np.array([1, 2, 3]))
    # Every array is as new but those read only up to a length (the ring up to `pushed`,
    # stop strings and their tables up to `stop_lengths`).
    for group, new in ((sampler.settings, fresh.settings), (sampler.state, fresh.state)):
        for name in group._fields:
            if name not in ("ring", "stops", "stop_fail"):
                assert np.array_equal(getattr(group, name), getattr(new, name)), name
    assert not sampler.settings.bias.any() and sampler.settings.logprobs[0] == -1


@pytest.mark.parametrize(("prime_length", "last_n"), [(3000, MAX_REPEAT_LAST_N), (5, 64), (9, 0)])
def test_window_of_a_long_prime(prime_length, last_n):
    """The ring holds the prime's last 2,048 chars; the window counts its last n."""
    prime = np.random.default_rng(1).integers(0, V, prime_length)
    sampler = SamplerRows(1, V)
    sampler.assign(0, request(repeat_last_n=last_n), prime)
    window = prime[len(prime) - last_n :] if last_n else prime[:0]
    assert np.array_equal(sampler.state.window_counts[0], np.bincount(window, minlength=V))
    kept = np.arange(max(0, prime_length - MAX_REPEAT_LAST_N), prime_length)
    assert np.array_equal(sampler.state.ring[0, kept % MAX_REPEAT_LAST_N], prime[kept])
    assert sampler.state.pushed[0] == prime_length


def test_refill_continues_the_requests_own_random_stream():
    sampler = SamplerRows(3, V)
    for row, seed in enumerate((11, 12, 13)):
        sampler.assign(row, request(seed=seed), np.array([1]))
    sampler.state.positions[:] = [UNIFORM_BLOCK, 5, UNIFORM_BLOCK]
    unchanged = sampler.state.uniforms[1].copy()
    sampler.refill(np.array([0, 1]))  # row 2 is not among the rows refilled
    stream = np.random.Generator(np.random.PCG64(11)).random(2 * UNIFORM_BLOCK)
    assert np.array_equal(sampler.state.uniforms[0], stream[UNIFORM_BLOCK:])
    assert sampler.state.positions.tolist() == [0, 5, UNIFORM_BLOCK]
    assert np.array_equal(sampler.state.uniforms[1], unchanged)


def test_every_array_has_a_row_per_slot_and_the_chain_reads_them_by_name():
    sampler = SamplerRows(2, V)
    for group in (sampler.settings, sampler.state, sampler.out):
        for name, array in zip(group._fields, group, strict=True):
            assert getattr(group, name) is array and array.shape[0] == 2, name
    assert sampler.settings.bias.shape == (2, V)
    assert sampler.state.ring.shape == (2, MAX_REPEAT_LAST_N)
    assert sampler.state.counts.shape == sampler.state.window_counts.shape == (2, V)


def test_topping_up_keeps_a_rows_stream_of_random_numbers():
    """Rows with fewer than `needed` numbers left keep them, moved to the front, and the
    block fills from the same generator: the row reads one stream, however it is cut."""
    sampler = SamplerRows(2, V)
    for row, seed in enumerate((7, 8)):
        sampler.assign(row, request(seed=seed), np.array([1]))
    stream = np.random.Generator(np.random.PCG64(7)).random(3 * UNIFORM_BLOCK)
    sampler.state.positions[:] = [UNIFORM_BLOCK - 3, UNIFORM_BLOCK - 8]
    untouched = sampler.state.uniforms[1].copy()
    sampler.refill(np.array([0, 1]), needed=5)  # row 1 still has 8
    assert sampler.state.positions.tolist() == [0, UNIFORM_BLOCK - 8]
    assert np.array_equal(
        sampler.state.uniforms[0], stream[UNIFORM_BLOCK - 3 : 2 * UNIFORM_BLOCK - 3]
    )
    assert np.array_equal(sampler.state.uniforms[1], untouched)
    sampler.state.positions[0] = 10
    sampler.refill(np.array([0]), needed=UNIFORM_BLOCK)  # every number wanted: top up now
    start = UNIFORM_BLOCK - 3 + 10
    assert np.array_equal(sampler.state.uniforms[0], stream[start : start + UNIFORM_BLOCK])
