"""Shared pieces of the decoding tests: a tiny vocabulary and network, and `serve`, which
drives a BatchDecoder the way the service's engine does (admit, step, record, remove,
prefill in slices, finish length-0 requests once their prime has run)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch

from model.config import ModelConfig
from model.decoding.decoder import BatchDecoder
from model.decoding.generate import SingleStream
from model.decoding.output import RowOutput
from model.decoding.params import GenerationParams
from model.decoding.sampler import FAILURES, RUNNING
from model.network import CharRNN
from model.vocab import Vocabulary

CHARS = "\n abcdefghijklmnopqrstu"  # 23 characters, ids in this order


def tiny_model(
    vocab_size: int = len(CHARS),
    hidden_size: int = 32,
    num_layers: int = 2,
    cell: str = "lstm",
    seed: int = 0,
) -> CharRNN:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, cell=cell
    )
    return CharRNN(config).eval()


@dataclass(frozen=True)
class Request:
    """A request in a `serve` run: it joins before iteration `join` and, if `cancel` is
    set, is removed (cancelled) after iteration `cancel` whatever its state."""

    name: str
    params: GenerationParams
    join: int = 0
    cancel: int | None = None


@dataclass
class Served:
    outputs: dict[str, RowOutput]
    slots: dict[str, int]  # the row each request had
    failures: dict[str, int]  # name → failure status
    peak: int = 0  # the most rows one step drew for


def serve_requests(
    decoder: BatchDecoder,
    requests: list[tuple],
    prefill_rows: int = 64,
    compact: bool = True,
) -> Served:
    """Run `requests` ((name, params[, join[, cancel]]) each, see Request) through
    `decoder` as the engine does, until every one has ended."""
    requests = [Request(*request) for request in requests]
    served = Served({}, {}, {})
    waiting = sorted(requests, key=lambda request: request.join)
    names: dict[int, str] = {}  # row → request name
    by_name = {request.name: request for request in requests}
    iteration = 0

    def leave(row: int) -> None:
        decoder.remove(row)
        del names[row]

    while waiting or names:
        while waiting and waiting[0].join <= iteration:
            request = waiting.pop(0)
            row = decoder.add(request.params, request.name)
            names[row] = request.name
            served.outputs[request.name] = RowOutput()
            served.slots[request.name] = row
        if len(decoder.decoding):
            served.peak = max(served.peak, len(decoder.decoding))
            for row in decoder.step().tolist():
                name = names[row]
                status = decoder.record(row, served.outputs[name])
                if status in FAILURES:
                    served.failures[name] = status
                if status != RUNNING:
                    leave(row)
            if compact:
                decoder.compact()
        rows, positions, done = decoder.prefill(prefill_rows)
        for row, position in zip(rows.tolist(), positions.tolist(), strict=True):
            decoder.record_prompt(row, position, served.outputs[names[row]])
        for row in done:
            if decoder.params[row].length == 0:
                decoder.finish_unsampled(row, served.outputs[names[row]])
                leave(row)
        for row, name in list(names.items()):
            if by_name[name].cancel is not None and by_name[name].cancel <= iteration:
                leave(row)
        iteration += 1
        assert iteration < 10_000, "the decoder made no progress"
    return served


def decode_alone(model: CharRNN, params: GenerationParams, backend: str = "auto") -> RowOutput:
    """The request decoded by SingleStream: its output once it has ended."""
    stream = SingleStream(model, params, backend=backend)
    shown = [char for chunk in stream for char in chunk]
    assert shown == stream.output.ids[: stream.output.released]
    return stream.output


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Torch's forward with one intra-op thread: on a loaded 2-core box idle OpenMP
    workers spin on the cores the test needs (a 2 × 32 step took ~30 ms, not ~0.5 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def vocab() -> Vocabulary:
    vocabulary = Vocabulary.from_text(CHARS)
    assert vocabulary.chars == tuple(CHARS)
    return vocabulary


@pytest.fixture(scope="session")
def model() -> CharRNN:
    """A 2 × 32 LSTM over the 23 characters of CHARS, random weights."""
    return tiny_model()


@pytest.fixture(scope="session")
def serve() -> Callable[..., Served]:
    return serve_requests


@pytest.fixture(scope="session")
def alone() -> Callable[..., RowOutput]:
    return decode_alone


@pytest.fixture(scope="session")
def make_model() -> Callable[..., CharRNN]:
    return tiny_model
