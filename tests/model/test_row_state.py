import numpy as np
import torch

from model.config import ModelConfig
from model.network import CharRNN
from model.row_state import MIN_ROWS, KernelRows, TorchRows, kernel_supported


def lstm():
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=9, hidden_size=16, num_layers=2)).eval()


def test_kernel_and_torch_rows_agree():
    model = lstm()
    kernel, reference = KernelRows(model, 3), TorchRows(model, 3)
    for rows in (kernel, reference):
        rows.prime([0, 1, 2], [[1, 2], [3], [4, 5, 6]])
        rows.advance(3, np.array([7, 8, 0]))
    np.testing.assert_allclose(kernel.logits(3), reference.logits(3), atol=2e-5)


def test_move_copies_state_and_logits():
    model = lstm()
    for rows in (KernelRows(model, 2), TorchRows(model, 2)):
        rows.prime([0, 1], [[1, 2, 3], [4]])
        rows.move(0, 1)
        assert np.array_equal(rows.logits(2)[0], rows.logits(2)[1])
        rows.advance(2, np.array([5, 5]))
        if isinstance(rows, KernelRows):  # row-invariant by construction (model.kernels)
            assert np.array_equal(rows.logits(2)[0], rows.logits(2)[1])
        else:  # MKL's GEMM may round two equal rows differently (by position, not value)
            np.testing.assert_allclose(rows.logits(2)[0], rows.logits(2)[1], atol=1e-6, rtol=0)


def test_torch_rows_pad_small_batches():
    assert TorchRows(lstm(), 2).hidden[0].shape[1] == MIN_ROWS


def test_kernel_supports_float32_cpu_lstms_only():
    assert kernel_supported(lstm())
    assert not kernel_supported(lstm().double())
    assert not kernel_supported(CharRNN(ModelConfig(vocab_size=9, hidden_size=4, cell="rnn")))
