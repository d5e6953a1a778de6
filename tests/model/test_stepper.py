import pytest
import torch

from model.config import ModelConfig
from model.network import CharRNN
from model.stepper import Stepper


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("lstm", 3), ("gru", 2)])
def test_steps_match_the_full_forward(cell, layers):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, hidden_size=12, num_layers=layers, cell=cell))
    model.eval()
    ids = torch.randint(0, 11, (4, 7))
    expected, expected_hidden = model(ids)

    stepper = Stepper(model)
    logits, hidden = stepper.prime(ids[:, :3])
    steps = [logits]
    for t in range(3, 7):
        logits, hidden = stepper.step(ids[:, t], hidden)
        steps.append(logits)

    torch.testing.assert_close(torch.stack(steps, 1), expected[:, 2:], atol=1e-5, rtol=0)
    for ours, theirs in zip(hidden, expected_hidden, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
