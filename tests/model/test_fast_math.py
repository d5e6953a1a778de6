import math

import numpy as np
import pytest
from numba import njit

from model.fast_math import JIT, fast_tanh, gate_sigmoid, gate_tanh, lstm_cell

# The rational tanh's largest error over float32 inputs, measured: 3.95e-7 (at x ≈ ±5.77).
# The wrappers below compile with the kernels' options (JIT: multiply-adds fuse), so they
# compute what the decoding step and the training recurrence compute.
TANH_ERROR = 4e-7


@njit(**JIT)
def _fast_tanh_all(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = fast_tanh(x[i])
    return out


@njit(**JIT)
def _gate_tanh_all(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = gate_tanh(x[i])
    return out


@njit(**JIT)
def _gate_sigmoid_all(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = gate_sigmoid(x[i])
    return out


@njit(**JIT)
def _lstm_cell_all(pre, cell):
    """pre (4, n), cell (n,) → (6, n): lstm_cell of each column."""
    out = np.empty((6, cell.size), pre.dtype)
    for j in range(cell.size):
        values = lstm_cell(pre[0, j], pre[1, j], pre[2, j], pre[3, j], cell[j])
        for k in range(6):
            out[k, j] = values[k]
    return out


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture(scope="module")
def grid() -> np.ndarray:
    """Every 3e-5 from -30 to 30 in float32: inside, at and past the clamp (±9)."""
    return np.linspace(-30, 30, 2_000_001).astype(np.float32)


def test_fast_tanh_is_accurate(grid):
    tanh = _fast_tanh_all(grid)
    assert tanh.dtype == np.float32
    assert np.abs(tanh - np.tanh(grid.astype(np.float64))).max() < TANH_ERROR
    assert np.array_equal(_fast_tanh_all(-grid), -tanh)  # odd
    assert _fast_tanh_all(np.float32([0.0]))[0] == 0.0
    assert np.abs(tanh).max() <= 1 + 2.5e-7  # near ±9 it overshoots 1 by up to 2 ulp


def test_float32_gates_use_fast_tanh_and_float64_gates_the_exact_one(grid):
    assert np.array_equal(_gate_tanh_all(grid), _fast_tanh_all(grid))
    wide = grid[::101].astype(np.float64)
    assert np.array_equal(_gate_tanh_all(wide), np.array([math.tanh(x) for x in wide]))
    assert gate_tanh(0.5) == math.tanh(0.5)  # the plain Python function


def test_gate_sigmoid_is_accurate(grid):
    result = _gate_sigmoid_all(grid)
    assert result.dtype == np.float32
    exact = sigmoid(grid.astype(np.float64))
    assert np.abs(result - exact).max() < TANH_ERROR / 2 + 1e-7
    assert result.min() > -2e-7 and result.max() < 1 + 2e-7
    wide = grid[::101].astype(np.float64)
    np.testing.assert_allclose(_gate_sigmoid_all(wide), sigmoid(wide), atol=1e-15, rtol=0)


def test_fast_tanh_propagates_nan():
    assert np.isnan(_fast_tanh_all(np.float32([np.nan]))[0])
    assert _fast_tanh_all(np.float32([np.inf, -np.inf])).tolist() == [1.0, -1.0]


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-14), (np.float32, 1e-6)])
def test_lstm_cell_is_pytorchs_cell(dtype, tolerance):
    rng = np.random.default_rng(0)
    pre = (rng.normal(size=(4, 1000)) * 4).astype(dtype)  # gate order i, f, g, o
    cell = (rng.normal(size=1000) * 2).astype(dtype)
    in_gate, forget, candidate, out_gate, new_cell, tanh_cell = _lstm_cell_all(pre, cell)
    i, f, g, o = sigmoid(pre[0]), sigmoid(pre[1]), np.tanh(pre[2]), sigmoid(pre[3])
    expected_cell = f * cell + i * g
    for value, expected in [
        (in_gate, i),
        (forget, f),
        (candidate, g),
        (out_gate, o),
        (new_cell, expected_cell),
        (tanh_cell, np.tanh(expected_cell)),
    ]:
        assert value.dtype == dtype
        np.testing.assert_allclose(value, expected, atol=tolerance * 10, rtol=0)
    # The new hidden value, as the step and the training recurrence compute it.
    np.testing.assert_allclose(
        out_gate * tanh_cell, o * np.tanh(expected_cell), atol=tolerance * 10
    )
