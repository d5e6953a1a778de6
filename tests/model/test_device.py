import pytest
import torch

from model.device import resolve_device
from model.network import preferred_impl


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu():
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_device("cuda")


def test_impl_per_device():
    assert preferred_impl(torch.device("cpu")) == "fused"
    assert preferred_impl(torch.device("cuda")) == "torch"
