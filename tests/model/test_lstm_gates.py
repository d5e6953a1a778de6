import numpy as np
import pytest

from model.lstm_gates import backward_gates, forward_gates


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def step_arrays(dtype, seed=0):
    rng = np.random.default_rng(seed)
    steps, hidden, batch = 3, 5, 4
    gates = rng.normal(size=(steps, batch, 4 * hidden)).astype(dtype)
    cells = rng.normal(size=(steps + 1, batch, hidden)).astype(dtype)
    hiddens = np.zeros_like(cells)
    return gates, cells, hiddens, np.zeros((steps, batch, hidden), dtype)


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-14), (np.float32, 1e-6)])
def test_forward_gates_is_the_lstm_cell(dtype, tolerance):
    gates, cells, hiddens, tanh_cells = step_arrays(dtype)
    pre = gates[1].astype(np.float64)
    previous_cell = cells[1].astype(np.float64)

    forward_gates(gates, 1, cells, hiddens, tanh_cells)

    i, f, g, o = np.split(pre, 4, axis=1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    cell = f * previous_cell + i * g
    np.testing.assert_allclose(gates[1], np.hstack([i, f, g, o]), atol=tolerance, rtol=0)
    np.testing.assert_allclose(cells[2], cell, atol=tolerance * 10, rtol=0)
    np.testing.assert_allclose(tanh_cells[1], np.tanh(cell), atol=tolerance * 10, rtol=0)
    np.testing.assert_allclose(hiddens[2], o * np.tanh(cell), atol=tolerance * 10, rtol=0)
    assert not hiddens[[0, 1, 3]].any()  # only step 1's output is written


def test_backward_gates_differentiates_the_forward():
    """Central differences of L = Σ a·h_{t+1} + Σ b·c_{t+1} through the pre-activations and
    c_t, against backward_gates' chain rule, in float64."""
    gates, cells, hiddens, tanh_cells = step_arrays(np.float64)
    rng = np.random.default_rng(1)
    weight_h, weight_c = rng.normal(size=(2, *cells.shape[1:]))
    pre, previous_cell = gates[0].copy(), cells[0].copy()

    def loss(pre_activations, cell_in):
        g, c, h, tc = gates.copy(), cells.copy(), hiddens.copy(), tanh_cells.copy()
        g[0], c[0] = pre_activations, cell_in
        forward_gates(g, 0, c, h, tc)
        return (weight_h * h[1]).sum() + (weight_c * c[1]).sum()

    forward_gates(gates, 0, cells, hiddens, tanh_cells)
    grad_c = weight_c.copy()
    grad_gates = np.zeros_like(gates)
    backward_gates(gates, 0, cells, tanh_cells, weight_h.copy(), grad_c, grad_gates)

    eps = 1e-6
    for index in np.ndindex(pre.shape):
        up, down = pre.copy(), pre.copy()
        up[index] += eps
        down[index] -= eps
        numeric = (loss(up, previous_cell) - loss(down, previous_cell)) / (2 * eps)
        assert grad_gates[0][index] == pytest.approx(numeric, abs=1e-8)
    for index in np.ndindex(previous_cell.shape):
        up, down = previous_cell.copy(), previous_cell.copy()
        up[index] += eps
        down[index] -= eps
        numeric = (loss(pre, up) - loss(pre, down)) / (2 * eps)
        assert grad_c[index] == pytest.approx(numeric, abs=1e-8)
