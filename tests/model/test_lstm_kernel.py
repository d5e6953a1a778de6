import pytest
import torch

from model.lstm_kernel import LSTMRecurrence, lstm_recurrence

GATE_MATHS = ["compiled", "torch"]


def random_inputs(steps, batch, hidden, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(steps, batch, 4 * hidden, generator=generator, dtype=dtype),
        torch.randn(batch, hidden, generator=generator, dtype=dtype),
        torch.randn(batch, hidden, generator=generator, dtype=dtype),
        torch.randn(4 * hidden, hidden, generator=generator, dtype=dtype) * 0.3,
    )


@pytest.mark.parametrize("gate_maths", GATE_MATHS)
def test_gradcheck_float64(gate_maths):
    args = tuple(a.requires_grad_() for a in random_inputs(5, 3, 4, torch.float64))
    assert torch.autograd.gradcheck(
        lambda *tensors: LSTMRecurrence.apply(*tensors, gate_maths), args
    )


@pytest.mark.parametrize("gate_maths", GATE_MATHS)
def test_matches_lstm_cell_step_by_step(gate_maths):
    torch.manual_seed(0)
    steps, batch, hidden, inputs = 6, 2, 5, 3
    cell = torch.nn.LSTMCell(inputs, hidden)
    x = torch.randn(steps, batch, inputs)
    h, c = torch.randn(batch, hidden), torch.randn(batch, hidden)
    projection = x @ cell.weight_ih.t() + cell.bias_ih + cell.bias_hh

    outputs, h_last, c_last = lstm_recurrence(projection, h, c, cell.weight_hh, gate_maths)

    expected = []
    for t in range(steps):
        h, c = cell(x[t], (h, c))
        expected.append(h)
    torch.testing.assert_close(outputs, torch.stack(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(h_last, h, atol=1e-6, rtol=0)
    torch.testing.assert_close(c_last, c, atol=1e-6, rtol=0)


def test_compiled_and_torch_gate_maths_agree_in_float32():
    """The default model's width: outputs, final state and all gradients, within fp32
    tolerance (the compiled tanh is within 3.3e-7 of the exact one; gradients gather
    twelve steps of such differences)."""
    results = {}
    for gate_maths in GATE_MATHS:
        args = tuple(a.requires_grad_() for a in random_inputs(12, 16, 256))
        outputs, h_last, c_last = lstm_recurrence(*args, gate_maths)
        weights = torch.randn(3, *outputs.shape[1:], generator=torch.Generator().manual_seed(1))
        loss = (outputs * weights[0]).sum() + (h_last * weights[1]).sum()
        (loss + (c_last * weights[2]).sum()).backward()
        results[gate_maths] = (outputs, h_last, c_last, *(a.grad for a in args))
    for compiled, reference in zip(results["compiled"], results["torch"], strict=True):
        scale = reference.abs().max().item()
        torch.testing.assert_close(compiled, reference, atol=1e-5 * max(scale, 1.0), rtol=1e-4)


@pytest.mark.parametrize("gate_maths", GATE_MATHS)
def test_unused_outputs_still_backpropagate(gate_maths):
    torch.manual_seed(0)
    projection = torch.randn(4, 3, 8, requires_grad=True)
    h0 = torch.zeros(3, 2)
    weight = torch.randn(8, 2, requires_grad=True)
    _, h_last, _ = lstm_recurrence(projection, h0, h0, weight, gate_maths)
    h_last.sum().backward()
    assert projection.grad.abs().sum() > 0 and weight.grad.abs().sum() > 0


def test_cpu_tensors_get_the_compiled_gate_maths(monkeypatch):
    calls = []
    monkeypatch.setattr(
        LSTMRecurrence, "apply", lambda *args: calls.append(args[-1]) or (None, None, None)
    )
    lstm_recurrence(*random_inputs(2, 1, 2))
    assert calls == ["compiled"]
