import pytest
import torch

from model.lstm_kernel import LSTMRecurrence, lstm_recurrence


def random_inputs(steps, batch, hidden, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(steps, batch, 4 * hidden, generator=generator, dtype=dtype),
        torch.randn(batch, hidden, generator=generator, dtype=dtype),
        torch.randn(batch, hidden, generator=generator, dtype=dtype),
        torch.randn(4 * hidden, hidden, generator=generator, dtype=dtype) * 0.3,
    )


def test_gradcheck_float64():
    args = tuple(a.requires_grad_() for a in random_inputs(5, 3, 4, torch.float64))
    assert torch.autograd.gradcheck(LSTMRecurrence.apply, args)


def test_matches_lstm_cell_step_by_step():
    torch.manual_seed(0)
    steps, batch, hidden, inputs = 6, 2, 5, 3
    cell = torch.nn.LSTMCell(inputs, hidden)
    x = torch.randn(steps, batch, inputs)
    h, c = torch.randn(batch, hidden), torch.randn(batch, hidden)
    projection = x @ cell.weight_ih.t() + cell.bias_ih + cell.bias_hh

    outputs, h_last, c_last = lstm_recurrence(projection, h, c, cell.weight_hh)

    expected = []
    for t in range(steps):
        h, c = cell(x[t], (h, c))
        expected.append(h)
    torch.testing.assert_close(outputs, torch.stack(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(h_last, h, atol=1e-6, rtol=0)
    torch.testing.assert_close(c_last, c, atol=1e-6, rtol=0)


def test_matches_pytorchs_lstm_in_float32_with_gradients():
    """The default model's width: outputs, final state and all gradients against
    torch.lstm (the compiled tanh is within 4e-7 of the exact one; gradients gather
    twelve steps of such differences)."""
    results = {}
    for kernel in ("fused", "torch"):
        projection, h0, c0, weight = (a.requires_grad_() for a in random_inputs(12, 16, 256))
        if kernel == "fused":
            outputs, h_last, c_last = lstm_recurrence(projection, h0, c0, weight)
        else:  # the input projection given as the input itself (W_ih = identity)
            identity = torch.eye(4 * 256)
            outputs, h_all, c_all = torch.lstm(
                projection, [h0[None], c0[None]], [identity, weight, torch.zeros(1024),
                torch.zeros(1024)], True, 1, 0.0, False, False, False,
            )  # fmt: skip
            h_last, c_last = h_all[0], c_all[0]
        weights = torch.randn(3, *outputs.shape[1:], generator=torch.Generator().manual_seed(1))
        loss = (outputs * weights[0]).sum() + (h_last * weights[1]).sum()
        (loss + (c_last * weights[2]).sum()).backward()
        results[kernel] = (outputs, h_last, c_last, projection.grad, h0.grad, c0.grad, weight.grad)
    for fused, reference in zip(results["fused"], results["torch"], strict=True):
        scale = reference.abs().max().item()
        torch.testing.assert_close(fused, reference, atol=1e-5 * max(scale, 1.0), rtol=1e-4)


def test_unused_outputs_still_backpropagate():
    torch.manual_seed(0)
    projection = torch.randn(4, 3, 8, requires_grad=True)
    h0 = torch.zeros(3, 2)
    weight = torch.randn(8, 2, requires_grad=True)
    _, h_last, _ = lstm_recurrence(projection, h0, h0, weight)
    h_last.sum().backward()
    assert projection.grad.abs().sum() > 0 and weight.grad.abs().sum() > 0


def test_other_devices_are_refused_with_a_message():
    inputs = random_inputs(2, 1, 2)
    meta = tuple(tensor.to("meta") for tensor in inputs)
    with pytest.raises(ValueError, match="runs on the CPU"):
        lstm_recurrence(*meta)
