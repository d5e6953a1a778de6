import math

import pytest
import torch

from model.config import ModelConfig
from model.decoder import generate
from model.network import CharRNN
from model.sampling import (
    SamplingConfig,
    prime_ids,
    resolve_seed,
    sample_rows,
    sorted_filtered_probs,
)
from model.vocab import OutOfVocabularyError, Vocabulary


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    vocab = Vocabulary.from_text("abcdefgh \n")
    return CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16)).eval(), vocab


def probs_of(logits, temperature=1.0, top_k=None, top_p=1.0):
    """Filtered probabilities of one row, back in vocabulary order."""
    logits = torch.as_tensor(logits, dtype=torch.float32).unsqueeze(0)
    k = torch.tensor([top_k or logits.shape[1]])
    probs, order = sorted_filtered_probs(
        logits, torch.tensor([temperature]), k, torch.tensor([top_p])
    )
    return torch.zeros_like(probs).scatter(1, order, probs)[0]


def test_top_k_keeps_the_k_largest():
    probs = probs_of([1.0, 3.0, 2.0, 0.0], top_k=2)
    assert (probs > 0).tolist() == [False, True, True, False]
    assert math.isclose(probs.sum().item(), 1.0, rel_tol=1e-6)
    assert (probs_of([1.0, 3.0, 2.0, 0.0], top_k=10) > 0).all()


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert (probs_of(logits, top_p=0.7) > 0).tolist() == [True, True, False, False]
    assert (probs_of(logits, top_p=0.5) > 0).tolist() == [True, False, False, False]
    assert (probs_of(logits, top_p=0.1) > 0).tolist() == [True, False, False, False]
    torch.testing.assert_close(probs_of(logits, top_p=0.7), torch.tensor([0.625, 0.375, 0, 0]))


def test_temperature_sharpens():
    cold = probs_of([2.0, 1.0], temperature=0.5)
    warm = probs_of([2.0, 1.0], temperature=2.0)
    assert cold[0] > warm[0]


def test_inverse_cdf_sampling_per_row():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]))
    ones = torch.ones(2)
    every_k = torch.tensor([3, 3])
    for u, expected in [
        (0.0, [0, 2]),
        (0.49, [0, 2]),
        (0.51, [1, 1]),
        (0.81, [2, 0]),
        (0.99, [2, 0]),
    ]:
        ids = sample_rows(logits, ones, every_k, ones, torch.full((2,), u))
        assert ids.tolist() == expected, u


def test_sample_rows_matches_the_distribution():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).expand(20_000, 3)
    n = logits.shape[0]
    ids = sample_rows(logits, torch.ones(n), torch.full((n,), 3), torch.ones(n), torch.rand(n))
    freq = torch.bincount(ids, minlength=3).float() / n
    torch.testing.assert_close(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.015, rtol=0)


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
