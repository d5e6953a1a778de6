import pytest
import torch

from training.config import TrainConfig
from training.precision import MixedPrecision, check_precision

CPU = torch.device("cpu")


def test_fp32_is_plain_training():
    precision = MixedPrecision("fp32", CPU, "fused")
    assert precision.scaler is None and precision.state_dict() is None
    weight = torch.ones(2, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.5)
    with precision.autocast():
        loss = (weight * 2).sum()
    precision.backward(loss)
    precision.unscale(optimizer)
    precision.step(optimizer)
    assert weight.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_needs_cuda_and_cudnn(precision):
    with pytest.raises(ValueError, match=f"precision {precision} needs a CUDA GPU; on cpu"):
        check_precision(precision, CPU, "torch")
    with pytest.raises(ValueError, match="needs lstm_impl 'torch'"):
        check_precision(precision, torch.device("cuda"), "fused")
    check_precision(precision, torch.device("cuda"), "torch")  # fine, if there is a GPU
    with pytest.raises(ValueError, match="needs lstm_impl 'torch' or 'auto'"):
        TrainConfig("data", "run", max_steps=1, precision=precision, lstm_impl="fused")


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        TrainConfig("data", "run", max_steps=1, precision="fp8")
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("fp8", CPU, "torch")
