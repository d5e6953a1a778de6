"""app/generation.py: validation against limits and vocabulary, and the threaded sampler."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from conftest import Script

from app.generation import InvalidRequest, Job, TextGenerator
from app.schemas import GenerateRequest, Limits
from model.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.sampling import SamplingConfig
from model.vocab import Vocabulary

pytestmark = pytest.mark.anyio

LIMITS = Limits(max_length=10, max_prime_length=10, default_length=10)


def job(length: int, seed: int = 1, prime: str = "ab") -> Job:
    return Job(prime, SamplingConfig(length=length, seed=seed))


def test_validate_applies_defaults_and_resolves_the_seed(generator: TextGenerator) -> None:
    validated = generator.validate(GenerateRequest(prime="abc"))
    assert validated.prime == "abc"
    assert validated.config.length == generator.limits.default_length
    assert isinstance(validated.config.seed, int)
    assert generator.validate(GenerateRequest(seed=5)).config.seed == 5


@pytest.mark.parametrize(
    ("request_fields", "field", "kind"),
    [
        ({"length": 301}, "length", "less_than_equal"),
        ({"prime": "a" * 51}, "prime", "string_too_long"),
        ({"prime": "abc€xyz€ß"}, "prime", "prime_out_of_vocabulary"),
    ],
)
def test_validate_names_the_field(
    generator: TextGenerator, request_fields: dict, field: str, kind: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generator.validate(GenerateRequest(**request_fields))
    assert (caught.value.field, caught.value.kind) == (field, kind)


def test_unknown_prime_chars_are_listed_or_skipped(generator: TextGenerator) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generator.validate(GenerateRequest(prime="abc€xyz€ß"))
    assert caught.value.ctx["missing"] == ["€", "ß"]
    assert "'€', 'ß'" in caught.value.message
    skipped = generator.validate(GenerateRequest(prime="abc€xyz€ß", skip_unknown=True))
    assert skipped.prime == "abcxyz"


async def test_generate_is_repeatable(generator: TextGenerator, vocab: Vocabulary) -> None:
    text, stats = await generator.generate(job(60, seed=7))
    again, _ = await generator.generate(job(60, seed=7))
    other, _ = await generator.generate(job(60, seed=8))
    assert len(text) == 60 and set(text) <= set(vocab.chars)
    assert text == again != other
    assert (stats.chars, stats.seed, stats.prime_chars, stats.model) == (60, 7, 2, "tiny")
    assert stats.seconds > 0 and stats.chars_per_second > 0


async def test_stream_coalesces_ready_chars(generator: TextGenerator) -> None:
    expected, _ = await generator.generate(job(80))
    generation = generator.stream(job(80))
    chunks = [await generation.__anext__()]
    generation.join()  # a slow consumer: everything produced meanwhile comes as one chunk
    rest = [chunk async for chunk in generation]
    assert "".join(chunks + rest) == expected
    # (rest is empty when the engine made all 80 chars before the first read)
    assert len(rest) <= 1
    assert generation.stats is not None and generation.stats.chars == 80


async def test_close_stops_the_worker(generator: TextGenerator) -> None:
    generation = generator.stream(job(10**7))
    await generation.__anext__()
    assert generator.active == 1
    generation.close()
    await anyio.to_thread.run_sync(generation.join, 5.0)
    assert generator.active == 0
    assert generation.stats is not None and generation.stats.chars < 10**7


async def test_the_event_loop_keeps_running(generator: TextGenerator) -> None:
    generation = generator.stream(job(10**7))
    try:
        await generation.__anext__()
        started = time.perf_counter()
        for _ in range(10):
            await anyio.sleep(0.01)
        assert time.perf_counter() - started < 1.0
    finally:
        generation.close()
        await anyio.to_thread.run_sync(generation.join, 5.0)


async def test_stop_all(generator: TextGenerator) -> None:
    generations = [generator.stream(job(10**7, seed=n)) for n in range(2)]
    for generation in generations:
        await generation.__anext__()
    await anyio.to_thread.run_sync(generator.stop_all)
    assert generator.active == 0


async def test_a_closed_generation_yields_nothing_and_leaves(generator: TextGenerator) -> None:
    generation = generator.stream(job(10))
    generation.close()
    assert [chunk async for chunk in generation] == []
    assert await anyio.to_thread.run_sync(generation.join, 5.0)
    assert generator.active == 0


async def test_engine_errors_reach_the_consumer(
    generator: TextGenerator, scripted_decoder: Script
) -> None:
    scripted_decoder("abc", fail=True)
    generation = generator.stream(job(10))
    received = ""
    with pytest.raises(RuntimeError, match="out of memory"):
        async for chunk in generation:
            received += chunk
    assert received == "abc"
    assert generator.active == 0


def test_a_job_needs_a_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        Job("ab", SamplingConfig(length=5))


def test_describe(generator: TextGenerator, vocab: Vocabulary, checkpoint_path: Path) -> None:
    info = generator.describe()
    assert info.name == "tiny" and info.checkpoint == str(checkpoint_path)
    assert info.device == "cpu"
    assert info.config.hidden_size == 16 and info.config.vocab_size == len(vocab)
    assert info.parameters == sum(p.numel() for p in generator.model.parameters())
    assert info.vocabulary == list(vocab.chars)
    assert (info.training.val_loss, info.training.corpus, info.training.step) == (
        1.25,
        "tiny",
        None,
    )


def test_load_errors_are_one_line(tmp_path: Path, checkpoint_path: Path, vocab: Vocabulary) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        TextGenerator.load(tmp_path / "missing.safetensors", "cpu", LIMITS)
    with pytest.raises(ValueError, match="unknown device"):
        TextGenerator.load(checkpoint_path, "tpu", LIMITS)
    # Weights of a 16-wide network under a header that says 8 wide.
    weights = Checkpoint.from_model(
        CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16)), vocab
    ).weights
    mismatched = Checkpoint(ModelConfig(vocab_size=len(vocab), hidden_size=8), vocab, weights)
    save_checkpoint(mismatched, tmp_path / "mismatched.safetensors")
    with pytest.raises(CheckpointError, match="do not fit") as caught:
        TextGenerator.load(tmp_path / "mismatched.safetensors", "cpu", LIMITS)
    assert "\n" not in str(caught.value)
