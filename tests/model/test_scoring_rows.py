"""Several texts scored together (model/scoring_rows.py): each text's numbers are those of
the text scored alone, bit for bit, whatever its neighbours and slices; no weight copy per
text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.decoding.step import step_weights
from model.network import CharRNN
from model.scoring import Scorer
from model.scoring_rows import read_rows

VOCAB = 19


def network(layers: int = 2) -> CharRNN:
    torch.manual_seed(3)
    return CharRNN(ModelConfig(VOCAB, 24, layers)).eval()


def text(length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, length)


def alone(model: CharRNN, ids: np.ndarray, top_n: int) -> Scorer:
    """The text as one Scorer with its own weights reads it."""
    scorer = Scorer(model, ids, top_n)
    while not scorer.done:
        scorer.advance(64)
    return scorer


@pytest.mark.parametrize("layers", [1, 3])
def test_texts_read_together_score_as_each_alone(layers: int) -> None:
    model = network(layers)
    weights = step_weights(model)
    texts = [text(length, seed) for seed, length in enumerate([300, 7, 129, 2, 64])]
    scorers = [Scorer(model, ids, 3, weights=weights) for ids in texts]
    rounds = 0
    while any(not scorer.done for scorer in scorers):
        read_rows([scorer for scorer in scorers if not scorer.done], weights, 50)
        rounds += 1
    assert rounds == 6  # ⌈300 / 50⌉: the texts advanced side by side
    for ids, scorer in zip(texts, scorers, strict=True):
        expected = alone(model, ids, 3)
        np.testing.assert_array_equal(scorer.logprobs, expected.logprobs)
        np.testing.assert_array_equal(scorer.top_ids, expected.top_ids)
        np.testing.assert_array_equal(scorer.top_logprobs, expected.top_logprobs)
        for ours, theirs in zip(scorer.hidden_state, expected.hidden_state, strict=True):
            np.testing.assert_array_equal(ours, theirs)  # the recurrence: bit for bit


def test_a_shared_scorer_reads_as_the_network() -> None:
    model = network()
    ids = text(90)
    scorer = Scorer(model, ids, weights=step_weights(model))
    while not scorer.done:
        scorer.advance(40)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids)[None])
    logprobs = torch.log_softmax(logits[0, :-1].double(), dim=-1)
    expected = logprobs[torch.arange(89), torch.from_numpy(ids[1:])].numpy()
    np.testing.assert_allclose(scorer.logprobs[1:], expected, atol=1e-5)


def test_a_shared_scorer_holds_no_weights_of_its_own() -> None:
    model = network()
    weights = step_weights(model)
    scorer = Scorer(model, text(10), weights=weights)
    owned = [value for value in vars(scorer).values() if isinstance(value, np.ndarray)]
    assert sum(array.nbytes for array in owned) < 10 * 1024  # state and results only
    assert not hasattr(scorer, "_table") and not hasattr(scorer, "_recurrent")


def test_a_shared_scorer_starts_from_a_state() -> None:
    model = network()
    first, second = text(40, 1), text(30, 2)
    head = alone(model, first, 0)
    state = head.final_state()
    ids = state.prime(second) if hasattr(state, "prime") else None
    if ids is None:
        pytest.skip("states have no prime()")
    scorer = Scorer(model, ids, weights=step_weights(model), state=state)
    while not scorer.done:
        scorer.advance(16)
    expected = alone(model, np.concatenate([first, second]), 0)
    np.testing.assert_allclose(scorer.logprobs[1:], expected.logprobs[40:], atol=1e-5)


def test_nothing_to_read_reads_nothing() -> None:
    model = network()
    weights = step_weights(model)
    scorer = Scorer(model, text(5), weights=weights)
    while not scorer.done:
        scorer.advance(100)
    assert read_rows([scorer], weights, 10) == 0


def test_a_texts_scores_do_not_depend_on_its_slices() -> None:
    """The output layer gives a row the same bits however many rows come with it (torch's
    Linear takes another kernel below HEAD_MIN_ROWS): slices of 1 to 3 characters, alone
    or beside other texts, score as slices of 64, bit for bit."""
    model = network()
    weights = step_weights(model)
    ids = text(40, 5)
    expected = alone(model, ids, 3)
    for size in (1, 2, 3):
        scorer = Scorer(model, ids, 3)
        while not scorer.done:
            scorer.advance(size)
        together = [
            Scorer(model, ids, 3, weights=weights),
            Scorer(model, text(9), 0, weights=weights),
        ]
        while not together[0].done:
            read_rows([scorer for scorer in together if not scorer.done], weights, size)
        for ours in (scorer, together[0]):
            np.testing.assert_array_equal(ours.logprobs, expected.logprobs)
            np.testing.assert_array_equal(ours.top_logprobs, expected.top_logprobs)
