"""app/engine/service.py: loading checkpoints, naming models, describing them, engine health."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.engine.config import EngineConfig, Limits
from app.engine.engine import DecodingEngine
from app.engine.served_model import ServedModel, UnknownModel
from app.engine.service import ModelService
from app.gate.clients import ClientLedger
from app.http.schemas import describe_model
from model.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.text import NEWLINES_KEEP, NEWLINES_LF
from model.vocab import Vocabulary

ENGINE = EngineConfig()
LIMITS = Limits(max_length=10, max_prime_length=10, default_length=10)


def test_describe(service: ModelService, vocab: Vocabulary) -> None:
    served = service.model()
    info = describe_model(served, service.limits)
    assert info.name == "tiny" and info.checkpoint == "tiny.safetensors"  # no server path
    assert info.device == "cpu"
    assert info.config.hidden_size == 16 and info.config.vocab_size == len(vocab)
    assert info.parameters == sum(p.numel() for p in served.model.parameters())
    assert info.vocabulary == list(vocab.chars)
    assert (info.training.val_loss, info.training.corpus, info.training.step) == (
        1.25,
        "tiny",
        None,
    )


def test_models_by_name(service: ModelService) -> None:
    assert service.model() is service.model("tiny")
    with pytest.raises(UnknownModel) as caught:
        service.model("gpt-4")
    assert caught.value.known == ["tiny"] and "tiny" in str(caught.value)


def test_load_errors_are_one_line(tmp_path: Path, checkpoint_path: Path, vocab: Vocabulary) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        ModelService.load(
            tmp_path / "missing.safetensors", "cpu", LIMITS, ENGINE, ClientLedger(ENGINE)
        )
    with pytest.raises(ValueError, match="unknown device"):
        ModelService.load(checkpoint_path, "tpu", LIMITS, ENGINE, ClientLedger(ENGINE))
    # Weights of a 16-wide network under a header that says 8 wide.
    weights = Checkpoint.from_model(
        CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16)), vocab
    ).weights
    mismatched = Checkpoint(ModelConfig(vocab_size=len(vocab), hidden_size=8), vocab, weights)
    save_checkpoint(mismatched, tmp_path / "mismatched.safetensors")
    with pytest.raises(CheckpointError) as caught:
        ModelService.load(
            tmp_path / "mismatched.safetensors", "cpu", LIMITS, ENGINE, ClientLedger(ENGINE)
        )
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("chars", "info", "mode"),
    [
        ("ab\n", {}, NEWLINES_LF),
        ("ab\r\n", {}, NEWLINES_KEEP),  # a model that saw "\r" reads it as it is
        ("ab\n", {"newlines": "keep"}, NEWLINES_KEEP),
        ("ab\r\n", {"newlines": "lf"}, NEWLINES_LF),
        ("ab\n", {"newlines": ["nonsense"]}, NEWLINES_LF),
    ],
)
def test_newline_mode_comes_from_the_checkpoint(chars: str, info: dict, mode: str) -> None:
    vocab = Vocabulary.from_text(chars)
    engine = DecodingEngine(EngineConfig(max_active=1), ClientLedger(EngineConfig()))
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=4))
    served = ServedModel("m", model, vocab, engine.add_lane("m", model, vocab.chars), info=info)
    assert served.newlines == mode


def test_health_reports_a_dead_or_stalled_engine(checkpoint_path: Path) -> None:
    service = ModelService.load(
        checkpoint_path, "cpu", LIMITS, ENGINE, ClientLedger(ENGINE), stall_seconds=0.2
    )
    assert service.engine_problem() == "the decoding engine is not running"
    service.start()
    try:
        assert service.engine_problem() is None
        # Rows are busy but nothing moves: the engine thread is stuck.
        service.engine.last_progress = time.monotonic() - 5
        service.model().lane.decoder._free.pop()  # a row looks taken
        problem = service.engine_problem()
        assert problem is not None and "no progress" in problem
    finally:
        service.model().lane.decoder._free.append(0)
        service.stop()
    assert service.engine_problem() == "the decoding engine is not running"
