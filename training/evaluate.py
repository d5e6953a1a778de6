"""Pipeline stage 5, evaluation: scoring a model on held-out text, the loop's validation
loss (and the sample it logs) and `eval` on any text.

Both count nats per predicted character (mean cross-entropy), and bits per char =
nats / ln 2; perplexity = e^nats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.checkpoint import Checkpoint
from model.decoding.generate import SingleStream
from model.decoding.params import GenerationParams, encode_prime
from model.documents import document_prime
from model.network import CharRNN, detach_hidden
from model.text import as_read, newline_mode
from model.vocab import Vocabulary
from training.batches import ColumnBatches
from training.distributed import Distributed
from training.recipe import TrainConfig

EVAL_SEQ_LEN = 256  # window length when scoring a text; the state carries across windows


@dataclass(frozen=True)
class EvalResult:
    nats_per_char: float
    bits_per_char: float
    perplexity: float
    chars: int  # characters scored (predictions)
    oov_chars: int  # characters not in the vocabulary, left out of the text before scoring

    @classmethod
    def from_total(cls, nats: float, chars: int, oov_chars: int = 0) -> EvalResult:
        mean = nats / chars if chars else float("nan")
        return cls(mean, bits_per_char(mean), math.exp(mean), chars, oov_chars)


def bits_per_char(nats_per_char: float) -> float:
    return nats_per_char / math.log(2)


@torch.no_grad()
def total_loss(
    model: CharRNN, batches: ColumnBatches, max_batches: int | None = None
) -> tuple[float, int]:
    """(summed nats, predictions) over the first `max_batches` windows (None: all), from a
    zero state carried across windows. Runs in eval mode (no dropout) through PyTorch's
    recurrence, and restores the model's mode after."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    hidden = model.init_hidden(batches.batch_size, device)
    nats, count = 0.0, 0
    try:
        for index in range(min(len(batches), max_batches or len(batches))):
            inputs, targets = (t.to(device) for t in batches.window(index))  # (B, T) each
            # Without a backward pass to run, PyTorch's own kernel is the faster one: tiny
            # Shakespeare's validation split takes 2.0 s instead of 3.4 s through the hand-
            # written recurrence (the same function, to float32 rounding).
            logits, hidden = model(inputs, hidden, "torch")  # (B, T, V)
            hidden = detach_hidden(hidden)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
            nats += loss.item()  # summed in float64 on the host
            count += targets.numel()
    finally:
        model.train(was_training)
    return nats, count


def validation_loss(
    model: CharRNN,
    batches: ColumnBatches,
    max_batches: int | None = None,
    dist: Distributed | None = None,
) -> float:
    """Mean nats per character on the held-out windows (what the loop reports). In a
    data-parallel run `batches` holds this rank's share of the columns (maybe none) and
    the mean is over all ranks' predictions: a collective, every rank calls it."""
    nats, count = total_loss(model, batches, max_batches) if batches.batch_size else (0.0, 0)
    if dist is not None:
        nats, count = dist.sum_floats([nats, count], model.head.weight.device)
    return nats / count


def evaluation_sample(model: CharRNN, vocab: Vocabulary, config: TrainConfig) -> str:
    """The sample logged at an evaluation: config.sample_length characters after
    config.sample_prime, seeded, so samples of one run differ only by the weights. A model
    of documents starts it as at the start of a document."""
    if config.sample_length == 0:
        return ""
    params = GenerationParams(
        prime=encode_prime(vocab, document_prime(config.sample_prime, vocab), skip_unknown=True),
        length=config.sample_length,
        seed=config.seed,
        temperature=config.sample_temperature,
    )
    was_training = model.training
    try:
        ids = [char for chunk in SingleStream(model, params) for char in chunk]
    finally:
        model.train(was_training)  # decoding switched it to eval mode
    return config.sample_prime + vocab.decode(ids)


def evaluate_text(
    checkpoint: Checkpoint,
    text: str,
    device: torch.device | str = "cpu",
    seq_len: int = EVAL_SEQ_LEN,
) -> EvalResult:
    """Score `text` as one stream, every character after the first predicted from all
    before it.

    The rule for characters outside the vocabulary (not one of `vocab.chars`): they are
    counted in `oov_chars` and removed from the text before scoring, so the text is scored
    as if they were not there. A vocabulary's unknown symbol (U+FFFD) written in the text
    is in the vocabulary and scored like any other character. A model trained on text with
    LF line endings (`info["newlines"]`, model.text) scores the text's CRLF and CR as LF.
    Raises ValueError when fewer than two characters are left."""
    text = as_read(text, newline_mode(checkpoint.info, checkpoint.vocab))
    vocab = checkpoint.vocab
    kept = [c for c in text if c in vocab]
    if len(kept) < 2:
        raise ValueError(
            f"need at least 2 in-vocabulary characters to score, got {len(kept)} "
            f"({len(text) - len(kept)} out of vocabulary)"
        )
    ids = np.asarray(vocab.encode("".join(kept)), dtype=np.int64)
    model = checkpoint.build_model(device)
    batches = ColumnBatches(ids, batch_size=1, seq_len=seq_len, drop_last=False)
    nats, count = total_loss(model, batches)
    return EvalResult.from_total(nats, count, len(text) - len(kept))


def combine_results(results: Sequence[EvalResult]) -> EvalResult:
    """Several texts' results as one, weighted by characters scored."""
    chars = sum(r.chars for r in results)
    nats = sum(r.nats_per_char * r.chars for r in results)
    return EvalResult.from_total(nats, chars, sum(r.oov_chars for r in results))
