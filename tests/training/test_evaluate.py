import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import Checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from training.batches import ColumnBatches, validation_batches
from training.evaluate import (
    EvalResult,
    combine_results,
    evaluate_text,
    total_loss,
    validation_loss,
)

VOCAB = Vocabulary(tuple("\nabcdefgh "))


@pytest.fixture
def checkpoint():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(VOCAB), hidden_size=16, num_layers=2, dropout=0.5))
    return Checkpoint.from_model(model, VOCAB)


def _direct_loss(checkpoint, text):
    """Mean cross-entropy of the whole text in one forward pass, batch of one."""
    ids = torch.tensor([VOCAB.encode(text)])
    logits, _ = checkpoint.build_model()(ids[:, :-1])
    return F.cross_entropy(logits[0], ids[0, 1:]).item()


def test_matches_one_pass_over_the_text(checkpoint):
    text = "abc defgh\nhgfedcba " * 5
    result = evaluate_text(checkpoint, text, seq_len=7)  # the state carries across windows
    assert result.chars == len(text) - 1 and result.oov_chars == 0
    assert result.nats_per_char == pytest.approx(_direct_loss(checkpoint, text), abs=1e-5)
    assert result.bits_per_char == pytest.approx(result.nats_per_char / math.log(2))
    assert result.perplexity == pytest.approx(math.exp(result.nats_per_char))


def test_out_of_vocabulary_characters_are_counted_and_left_out(checkpoint):
    text = "abc dXef\nghZZ ab"
    result = evaluate_text(checkpoint, text)
    clean = evaluate_text(checkpoint, "abc def\ngh ab")
    assert result.oov_chars == 3 and result.chars == clean.chars == 12
    assert result.nats_per_char == pytest.approx(clean.nats_per_char)
    with pytest.raises(ValueError, match="at least 2 in-vocabulary characters"):
        evaluate_text(checkpoint, "aXYZ")


def test_validation_loss_is_the_mean_and_keeps_the_mode(checkpoint):
    model = checkpoint.build_model().train()
    ids = np.asarray(VOCAB.encode("abcdefgh \n" * 20), dtype=np.uint8)
    batches = validation_batches(ids, batch_size=4, seq_len=8)
    nats, count = total_loss(model, batches)
    assert count == batches.predictions == 4 * ((len(ids) - 1) // 4)
    assert validation_loss(model, batches) == pytest.approx(nats / count)
    assert model.training  # evaluation ran without dropout and put the mode back
    capped, capped_count = total_loss(model, batches, max_batches=1)
    assert capped_count == 4 * 8 and capped < nats
    one_column = ColumnBatches(ids, 1, 8, drop_last=False)
    assert total_loss(model, one_column)[1] == len(ids) - 1


def test_combined_results_weigh_by_characters():
    a = EvalResult.from_total(nats=10.0, chars=10, oov_chars=1)
    b = EvalResult.from_total(nats=30.0, chars=10)
    total = combine_results([a, b])
    assert (total.nats_per_char, total.chars, total.oov_chars) == (2.0, 20, 1)


def test_a_model_of_lf_text_scores_crlf_as_lf(checkpoint):
    crlf, lf = "abc\r\ndef\rgh\n" * 3, "abc\ndef\ngh\n" * 3
    checkpoint.info["newlines"] = "lf"
    assert evaluate_text(checkpoint, crlf) == evaluate_text(checkpoint, lf)
    assert evaluate_text(checkpoint, crlf).oov_chars == 0
    checkpoint.info["newlines"] = "keep"  # the bytes as they are: "\r" is not in its vocabulary
    assert evaluate_text(checkpoint, crlf).oov_chars == 6
    del checkpoint.info["newlines"]  # unrecorded, no "\r" in its vocabulary: read as LF
    assert evaluate_text(checkpoint, crlf) == evaluate_text(checkpoint, lf)
