import math

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.kernels import _sigmoid, _tanh, filtered_probs, sample_rows
from model.network import CharRNN
from model.row_state import KernelRows


def lstm(vocab=11, hidden=13, layers=2, seed=0):
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers)).eval()


@pytest.mark.parametrize("layers,hidden", [(1, 12), (2, 13), (3, 8)])
def test_kernel_steps_match_the_network(layers, hidden):
    model = lstm(hidden=hidden, layers=layers)
    ids = torch.randint(0, 11, (5, 9))
    expected, (h, c) = model(ids)  # (B, T, V)
    rows = KernelRows(model, capacity=5)
    rows.prime(list(range(5)), ids.tolist())
    np.testing.assert_allclose(rows.logits(5), expected[:, -1].detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(rows.h[:, :5], h.detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(rows.c[:, :5], c.detach().numpy(), atol=2e-5)


def test_a_row_is_bit_identical_whatever_shares_its_step():
    model = lstm(vocab=23, hidden=33)  # odd width: the k loop's tail runs too
    prime = [1, 5, 7, 2, 9]
    rng = np.random.default_rng(0)
    results = []
    for count, position in [(1, 0), (2, 1), (5, 2), (17, 16), (17, 3)]:
        rows = KernelRows(model, capacity=20)
        primes = [rng.integers(0, 23, size=5).tolist() for _ in range(count)]
        primes[position] = prime
        rows.prime(list(range(count)), primes)
        for step in range(6):
            ids = rng.integers(0, 23, size=count)
            ids[position] = step
            rows.advance(count, ids)
        results.append((rows.logits(count)[position].copy(), rows.h[:, position].copy()))
    for logits, hidden in results[1:]:
        assert np.array_equal(logits, results[0][0])
        assert np.array_equal(hidden, results[0][1])


def test_primes_of_different_lengths_run_together_as_if_alone():
    model = lstm()
    primes = [[1], [2, 3, 4, 5], [6, 7]]
    together = KernelRows(model, capacity=3)
    together.prime([0, 1, 2], primes)
    for row, prime in enumerate(primes):
        alone = KernelRows(model, capacity=1)
        alone.prime([0], [prime])
        assert np.array_equal(alone.logits(1)[0], together.logits(3)[row])


def test_fast_tanh_and_sigmoid_are_accurate():
    x = np.linspace(-30, 30, 200_001).astype(np.float32)
    tanh = np.array([_tanh(v) for v in x[::97]])
    sigmoid = np.array([_sigmoid(v) for v in x[::97]])
    exact = x[::97].astype(np.float64)
    assert np.abs(tanh - np.tanh(exact)).max() < 5e-7
    assert np.abs(sigmoid - 1 / (1 + np.exp(-exact))).max() < 5e-7


def probs_of(logits, temperature=1.0, top_k=None, top_p=1.0):
    """Filtered probabilities of one row, back in vocabulary order."""
    logits = np.asarray(logits, dtype=np.float32)
    probs, order = filtered_probs(logits, temperature, top_k or len(logits), top_p)
    out = np.zeros(len(logits))
    out[order] = probs
    return out


def test_top_k_keeps_the_k_largest():
    probs = probs_of([1.0, 3.0, 2.0, 0.0], top_k=2)
    assert (probs > 0).tolist() == [False, True, True, False]
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-12)
    assert (probs_of([1.0, 3.0, 2.0, 0.0], top_k=10) > 0).all()


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert (probs_of(logits, top_p=0.7) > 0).tolist() == [True, True, False, False]
    assert (probs_of(logits, top_p=0.5) > 0).tolist() == [True, False, False, False]
    assert (probs_of(logits, top_p=0.1) > 0).tolist() == [True, False, False, False]
    np.testing.assert_allclose(probs_of(logits, top_p=0.7), [0.625, 0.375, 0, 0], atol=1e-6)


def test_temperature_sharpens():
    cold = probs_of([2.0, 1.0], temperature=0.5)
    warm = probs_of([2.0, 1.0], temperature=2.0)
    assert cold[0] > warm[0]


def test_ties_keep_vocabulary_order():
    _, order = filtered_probs(np.zeros(4, np.float32), 1.0, 4, 1.0)
    assert order.tolist() == [0, 1, 2, 3]


def draw(logits, uniform, top_k=None):
    logits = np.asarray(logits, dtype=np.float32)
    n, vocab = logits.shape
    out = np.zeros(n, dtype=np.int64)
    positions = np.zeros(n, dtype=np.int64)
    uniforms = np.asarray(uniform, dtype=np.float64).reshape(n, -1)
    top_k = np.full(n, top_k or vocab, dtype=np.int64)
    sample_rows(n, logits, np.ones(n), top_k, np.ones(n), uniforms, positions, out)
    assert (positions == 1).all()  # one uniform consumed per row
    return out


def test_inverse_cdf_sampling_per_row():
    logits = np.log([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    for u, expected in [
        (0.0, [0, 2]),
        (0.49, [0, 2]),
        (0.51, [1, 1]),
        (0.81, [2, 0]),
        (0.99, [2, 0]),
    ]:
        assert draw(logits, [u, u]).tolist() == expected, u


def test_sampling_matches_the_distribution():
    n = 20_000
    logits = np.tile(np.log([0.6, 0.3, 0.1]), (n, 1))
    ids = draw(logits, np.random.default_rng(0).random(n))
    np.testing.assert_allclose(np.bincount(ids, minlength=3) / n, [0.6, 0.3, 0.1], atol=0.015)


def test_top_k_one_is_greedy_whatever_the_uniform():
    logits = np.log([[0.2, 0.5, 0.3]] * 3)
    assert draw(logits, [0.0, 0.5, 0.999], top_k=1).tolist() == [1, 1, 1]


@pytest.mark.parametrize("count", [16, 17, 40])
def test_rows_split_over_threads_match_one_thread(count):
    model = lstm(vocab=23, hidden=24)
    rng = np.random.default_rng(1)
    primes = [rng.integers(0, 23, size=3).tolist() for _ in range(count)]
    steps = [rng.integers(0, 23, size=count) for _ in range(4)]
    results = []
    for threads in (1, 2, 3):
        rows = KernelRows(model, capacity=count, threads=threads)
        rows.prime(list(range(count)), primes)
        for ids in steps:
            rows.advance(count, ids)
        results.append(rows.logits(count).copy())
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])
