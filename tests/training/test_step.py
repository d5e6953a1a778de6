import pytest
import torch

from model.config import ModelConfig
from model.network import CharRNN
from training.recipe import TrainConfig
from training.step import (
    MixedPrecision,
    WeightAverage,
    check_precision,
    torch_threads,
)

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


def _model(seed: int) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=7, hidden_size=8, num_layers=2, dropout=0.0))


def test_the_first_update_copies_and_later_ones_blend_with_a_warming_decay():
    model = _model(0)
    average = WeightAverage(_model(1), decay=0.5)
    average.update(model)  # the first: a copy, whatever the copy held before
    for name, value in model.state_dict().items():
        assert torch.equal(average.model.state_dict()[name], value)

    before = {k: v.clone() for k, v in average.model.state_dict().items()}
    newer = _model(2)
    decay = average.current_decay()
    assert decay == pytest.approx(2 / 11)  # (1 + n) / (10 + n) after n = 1 update, < 0.5
    average.update(newer)
    for name, value in newer.state_dict().items():
        expected = decay * before[name] + (1 - decay) * value
        torch.testing.assert_close(average.model.state_dict()[name], expected)
    assert average.updates == 2


def test_the_decay_settles_at_its_value_and_the_raw_model_is_left_alone():
    model = _model(0)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage(model, decay=0.9, updates=500)
    assert average.current_decay() == 0.9
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    average.update(model)  # not the first (500 held): a blend, not a copy
    for name, value in model.state_dict().items():
        torch.testing.assert_close(average.model.state_dict()[name], 0.9 * raw[name] + 0.1 * value)
        torch.testing.assert_close(value, raw[name] + 1.0)  # the raw weights stay as stepped


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_a_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(_model(0), decay)


def test_threads_are_set_inside_and_restored_after():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
