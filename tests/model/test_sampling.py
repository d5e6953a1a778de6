import pytest
import torch

from model.config import ModelConfig
from model.decoder import generate
from model.network import CharRNN
from model.sampling import SamplingConfig, prime_ids, resolve_seed
from model.vocab import OutOfVocabularyError, Vocabulary


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    vocab = Vocabulary.from_text("abcdefgh \n")
    return CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16)).eval(), vocab


def test_same_seed_same_text(tiny):
    model, vocab = tiny
    config = SamplingConfig(length=50, seed=123, top_k=5, temperature=0.8)
    first = "".join(generate(model, vocab, "abc", config))
    second = "".join(generate(model, vocab, "abc", config))
    other = "".join(generate(model, vocab, "abc", SamplingConfig(length=50, seed=124)))
    assert first == second and len(first) == 50 and first != other
    assert set(first) <= set(vocab.chars)


def test_top_k_one_is_greedy(tiny):
    model, vocab = tiny
    greedy = "".join(generate(model, vocab, "ab", SamplingConfig(length=20, top_k=1, seed=1)))
    other_seed = "".join(generate(model, vocab, "ab", SamplingConfig(length=20, top_k=1, seed=2)))
    assert greedy == other_seed


def test_prime_out_of_vocabulary(tiny):
    _, vocab = tiny
    with pytest.raises(OutOfVocabularyError) as error:
        prime_ids(vocab, "abXYZ")
    assert error.value.missing == ["X", "Y", "Z"]
    assert prime_ids(vocab, "aXb", skip_unknown=True) == vocab.encode("ab")


def test_empty_prime_starts_from_newline(tiny):
    _, vocab = tiny
    assert prime_ids(vocab, "") == vocab.encode("\n")


def test_resolve_seed():
    assert resolve_seed(5) == 5
    assert 0 <= resolve_seed(None) < 2**63


@pytest.mark.parametrize(
    "bad",
    [{"length": -1}, {"temperature": 0}, {"top_k": 0}, {"top_p": 0}, {"top_p": 1.5}, {"seed": -1}],
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)
