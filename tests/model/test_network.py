import pytest
import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.network import CharRNN, detach_hidden, dropout, keep_mask

REFERENCE = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def explicit_one_hot_reference(model: CharRNN) -> torch.nn.Module:
    """A stock nn.LSTM/GRU/RNN fed an explicit one-hot input, sharing the model's weights."""
    config = model.config
    reference = REFERENCE[config.cell](
        config.vocab_size, config.hidden_size, config.num_layers, batch_first=True
    )
    reference.load_state_dict({k[4:]: v for k, v in model.state_dict().items() if k[:4] == "rnn."})
    return reference


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("impl", ["fused", "torch"])
def test_gathered_input_matches_explicit_one_hot(cell, num_layers, impl):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=13, hidden_size=24, num_layers=num_layers, cell=cell))
    model.eval()
    reference = explicit_one_hot_reference(model)
    ids = torch.randint(0, 13, (3, 11))
    hidden = tuple(torch.randn_like(h) for h in model.init_hidden(3))

    logits, new_hidden = model(ids, hidden, impl)

    ref_out, ref_hidden = reference(
        F.one_hot(ids, 13).float(), hidden if cell == "lstm" else hidden[0]
    )
    ref_hidden = ref_hidden if cell == "lstm" else (ref_hidden,)
    assert logits.shape == (3, 11, 13)
    torch.testing.assert_close(logits, model.head(ref_out), atol=1e-5, rtol=0)
    for ours, theirs in zip(new_hidden, ref_hidden, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_default_lstm_gradients_match_nn_lstm():
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=17, hidden_size=32, num_layers=2, dropout=0.0))
    reference = explicit_one_hot_reference(model)
    ids = torch.randint(0, 17, (4, 9))
    targets = torch.randint(0, 17, (4, 9))

    logits, _ = model(ids)
    F.cross_entropy(logits.reshape(-1, 17), targets.reshape(-1)).backward()
    ref_out, _ = reference(F.one_hot(ids, 17).float())
    ref_logits = F.linear(ref_out, model.head.weight.detach(), model.head.bias.detach())
    F.cross_entropy(ref_logits.reshape(-1, 17), targets.reshape(-1)).backward()

    for name, param in reference.named_parameters():
        ours = getattr(model.rnn, name).grad
        torch.testing.assert_close(ours, param.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_default_config_is_the_product_model():
    config = ModelConfig(vocab_size=65)
    model = CharRNN(config)
    assert (config.hidden_size, config.num_layers, config.dropout, config.cell) == (
        256,
        2,
        0.5,
        "lstm",
    )
    assert model.rnn.weight_ih_l0.shape == (4 * 256, 65)  # one-hot input of size V
    assert model.head.weight.shape == (65, 256)


def test_forget_bias_sets_the_forget_gates_and_nothing_else():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=7, hidden_size=8, num_layers=2))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.set_forget_bias(1.0)
    forget = slice(8, 16)  # gate order (i, f, g, o), H = 8
    for layer in range(2):
        _, _, bias_ih, bias_hh = model.layer_weights(layer)
        torch.testing.assert_close(bias_ih[forget] + bias_hh[forget], torch.ones(8))
        for name, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
            kept = torch.cat([bias[:8], bias[16:]])
            original = before[f"rnn.{name}_l{layer}"]
            assert torch.equal(kept, torch.cat([original[:8], original[16:]]))
    for name, param in model.named_parameters():
        if "bias" not in name:
            assert torch.equal(param, before[name]), name
    with pytest.raises(ValueError, match="forget gates are the LSTM's"):
        CharRNN(ModelConfig(vocab_size=7, hidden_size=8, cell="gru")).set_forget_bias(1.0)


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=7, hidden_size=8))
    ids = torch.randint(0, 7, (2, 5))
    model.eval()
    first, _ = model(ids)
    second, _ = model(ids)
    assert torch.equal(first, second)
    model.train()
    noisy, _ = model(ids)
    assert not torch.allclose(noisy, first)


def test_dropout_zeroes_about_p_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(100_000)
    out = dropout(x, 0.5, training=True)
    assert abs((out == 0).float().mean().item() - 0.5) < 0.01
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert dropout(x, 0.5, training=False) is x


@pytest.mark.parametrize("p", [0.5, 0.25, 0.1])
def test_keep_mask_keeps_about_1_minus_p_independently(p):
    torch.manual_seed(0)
    keep = keep_mask((300, 1001), p, torch.device("cpu")).float()  # an odd element count
    assert keep.shape == (300, 1001)
    assert abs(keep.mean().item() - (1 - p)) < 0.005
    flat = keep.flatten()
    for lag in (1, 7, 8, 64):  # neighbours share a byte or a word of random bits
        both = (flat[:-lag] * flat[lag:]).mean().item()
        assert abs(both - (1 - p) ** 2) < 0.005, lag
    assert not torch.equal(keep, keep_mask((300, 1001), p, torch.device("cpu")).float())


def test_hidden_state_carries_information_across_calls():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=5, hidden_size=8, dropout=0.0)).eval()
    ids = torch.randint(0, 5, (2, 10))
    whole, _ = model(ids)
    first, hidden = model(ids[:, :6])
    rest, _ = model(ids[:, 6:], detach_hidden(hidden))
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"vocab_size": 0},
        {"hidden_size": 0},
        {"num_layers": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"cell": "lstmx"},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ModelConfig(**{"vocab_size": 5, **bad})
