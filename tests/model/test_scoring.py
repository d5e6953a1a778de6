"""Scoring (model/scoring.py): log-probabilities as the network gives them, and the text's
state as the decoder would leave it, bit for bit, from zeros or from a state."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.decoding.generate import SingleStream
from model.decoding.params import GenerationParams
from model.network import CharRNN
from model.scoring import Scorer, score_text

VOCAB = 19


def network(cell: str = "lstm", layers: int = 2) -> CharRNN:
    torch.manual_seed(3)
    return CharRNN(ModelConfig(VOCAB, 24, layers, cell=cell)).eval()


def text(length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, length)


def read(scorer: Scorer, slice_chars: int) -> Scorer:
    while not scorer.done:
        scorer.advance(slice_chars)
    return scorer


def generated(model, prime, seed=1, backend="auto"):
    """30 characters generated after `prime`, and the state of the whole text."""
    stream = SingleStream(model, GenerationParams(prime=prime, length=30, seed=seed), backend)
    for _ in stream:
        pass
    return stream.output.ids, stream.final_state()


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_logprobs_are_the_networks(layers):
    model = network(layers=layers)
    ids = text(300)
    scorer = score_text(model, ids, top_n=2, slice_chars=64)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids)[None])
    expected = torch.log_softmax(logits[0].double(), -1)[torch.arange(299), ids[1:]].numpy()
    assert np.isnan(scorer.logprobs[0])
    np.testing.assert_allclose(scorer.logprobs[1:], expected, atol=2e-5, rtol=0)
    assert (scorer.top_logprobs[1:, 0] >= scorer.logprobs[1:] - 1e-12).all()


def test_a_text_of_one_character_leaves_the_state_after_it():
    model = network()
    scorer = Scorer(model, [4])
    assert scorer.advance(5) == 1 and scorer.done and scorer.advance(5) == 0
    state = scorer.final_state()
    assert state.last == 4 and state.chars == 1 and np.any(state.arrays[0])
    stream = SingleStream(model, GenerationParams(prime=(4,), length=0, seed=0))
    assert not list(stream) and stream.final_state().same(state)


def test_the_final_state_is_the_decoders_bit_for_bit():
    """A text scored (in any slices, on one thread or two) leaves the state a generation of
    the same text leaves: a state from /score continues as exactly as one from /generate."""
    model = network()
    prime = tuple(text(40).tolist())
    written, expected = generated(model, prime)
    whole = [*prime, *written]
    for slice_chars, threads in ((1, 0), (7, 1), (1000, 1)):
        with ThreadPoolExecutor(1) as executor:
            scorer = read(Scorer(model, whole, executor=executor if threads else None), slice_chars)
        assert scorer.final_state().same(expected)


def test_scoring_from_a_state_reads_the_text_after_it():
    model = network()
    prime = tuple(text(50, seed=1).tolist())
    written, state = generated(model, prime)
    after = text(60, seed=2).tolist()
    whole = read(Scorer(model, [*prime, *written, *after]), 16)
    scorer = read(Scorer(model, state.prime(after), top_n=1, state=state), 16)
    assert np.isnan(scorer.logprobs[0])  # the state's last character: known, not scored
    # the output layer is a BLAS product: its rows round differently in other slices
    np.testing.assert_allclose(scorer.logprobs[1:], whole.logprobs[-60:], atol=1e-6, rtol=0)
    assert scorer.final_state().same(whole.final_state())
    assert scorer.final_state().chars == len(prime) + len(written) + 60
    fresh = read(Scorer(model, state.prime(after)), 16)  # the same ids without the state
    assert not np.allclose(fresh.logprobs[1:], scorer.logprobs[1:])


def test_other_cells_score_from_a_state_too():
    model = network("gru")
    prime = tuple(text(30).tolist())
    written, state = generated(model, prime, backend="torch")
    after = text(20, seed=4).tolist()
    whole = read(Scorer(model, [*prime, *written, *after]), 8)
    scorer = read(Scorer(model, state.prime(after), state=state), 8)
    np.testing.assert_allclose(scorer.logprobs[1:], whole.logprobs[-20:], atol=1e-5, rtol=0)
    ours_state, whole_state = scorer.final_state(), whole.final_state()
    for ours, expected in zip(ours_state.arrays, whole_state.arrays, strict=True):
        np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_bad_uses_are_refused():
    model = network()
    _, state = generated(model, (1, 2, 3))
    with pytest.raises(ValueError, match="last character"):
        Scorer(model, [(state.last + 1) % VOCAB, 2], state=state)
    with pytest.raises(ValueError, match="empty"):
        Scorer(model, [])
    scorer = Scorer(model, text(20))
    scorer.advance(5)
    with pytest.raises(RuntimeError, match="not read"):
        scorer.final_state()
