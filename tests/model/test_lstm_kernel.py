import torch

from model.lstm_kernel import LSTMRecurrence, lstm_recurrence


def test_gradcheck_float64():
    torch.manual_seed(0)
    steps, batch, hidden = 5, 3, 4
    args = (
        torch.randn(steps, 4 * hidden, batch, dtype=torch.float64, requires_grad=True),
        torch.randn(hidden, batch, dtype=torch.float64, requires_grad=True),
        torch.randn(hidden, batch, dtype=torch.float64, requires_grad=True),
        torch.randn(4 * hidden, hidden, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(LSTMRecurrence.apply, args)


def test_matches_lstm_cell_step_by_step():
    torch.manual_seed(0)
    steps, batch, hidden, inputs = 6, 2, 5, 3
    cell = torch.nn.LSTMCell(inputs, hidden)
    x = torch.randn(steps, batch, inputs)
    h, c = torch.randn(batch, hidden), torch.randn(batch, hidden)
    projection = (x @ cell.weight_ih.t() + cell.bias_ih + cell.bias_hh).transpose(1, 2)

    outputs, h_last, c_last = lstm_recurrence(projection, h.t(), c.t(), cell.weight_hh)

    expected = []
    for t in range(steps):
        h, c = cell(x[t], (h, c))
        expected.append(h)
    torch.testing.assert_close(outputs.transpose(1, 2), torch.stack(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(h_last.t(), h, atol=1e-6, rtol=0)
    torch.testing.assert_close(c_last.t(), c, atol=1e-6, rtol=0)


def test_unused_outputs_still_backpropagate():
    torch.manual_seed(0)
    projection = torch.randn(4, 8, 3, requires_grad=True)
    h0 = torch.zeros(2, 3)
    weight = torch.randn(8, 2, requires_grad=True)
    _, h_last, _ = lstm_recurrence(projection, h0, h0, weight)
    h_last.sum().backward()
    assert projection.grad.abs().sum() > 0 and weight.grad.abs().sum() > 0
