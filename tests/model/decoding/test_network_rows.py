import threading

import numpy as np
import pytest
import torch

from model.decoding.automaton import AutomatonPool
from model.decoding.network_rows import (
    MIN_ROWS,
    KernelRows,
    RowSnapshot,
    TorchRows,
    kernel_supported,
)
from model.decoding.params import GenerationParams
from model.decoding.sampler import RUNNING, sample_rows
from model.decoding.sampler_rows import SamplerRows, StepBlock

BACKENDS = {"kernel": KernelRows, "torch": TorchRows}


def rows_of(kind, model, capacity, threads=1):
    return KernelRows(model, capacity, threads) if kind == "kernel" else TorchRows(model, capacity)


def state(rows, row):
    if isinstance(rows, KernelRows):
        return np.stack([rows.h[:, row], rows.c[:, row]])
    return np.stack([buffer[:, row].numpy() for buffer in rows.hidden])


@pytest.mark.parametrize(
    ("kind", "cell"), [("kernel", "lstm"), ("torch", "lstm"), ("torch", "gru")]
)
def test_rows_follow_the_network(make_model, kind, cell):
    """Primes of different lengths fed a step at a time into scattered slots: each slot's
    logits and state are the network's over its own prime."""
    model = make_model(hidden_size=13, num_layers=2, cell=cell)
    primes = {5: [1, 2, 3, 4], 0: [7], 2: [22, 0, 9, 9, 1, 4]}
    rows = rows_of(kind, model, 6)
    for t in range(6):
        live = [row for row, prime in primes.items() if t < len(prime)]
        rows.advance(np.array(live), np.array([primes[row][t] for row in live]))
    for row, prime in primes.items():
        with torch.no_grad():
            logits, hidden = model(torch.tensor([prime]))
        np.testing.assert_allclose(rows.logits[row], logits[0, -1].numpy(), atol=2e-5, rtol=0)
        expected = np.stack([h[:, 0].numpy() for h in hidden])
        np.testing.assert_allclose(state(rows, row)[: len(expected)], expected, atol=2e-5)
    assert not rows.logits[[1, 3, 4]].any()


@pytest.mark.parametrize("kind", BACKENDS)
def test_reset_snapshot_restore(model, kind):
    rows = rows_of(kind, model, 3)
    rows.advance(np.array([0, 1]), np.array([4, 5]))
    snapshot = rows.snapshot(1)
    assert isinstance(snapshot, RowSnapshot)
    config = model.config
    assert snapshot.nbytes == 4 * (2 * config.num_layers * config.hidden_size + config.vocab_size)
    saved_logits, saved_state = rows.logits[1].copy(), state(rows, 1)
    rows.advance(np.array([1]), np.array([6]))  # the snapshot is a copy: it stays
    rows.reset(1)
    assert not state(rows, 1).any() and state(rows, 0).any()
    rows.restore(2, snapshot)
    assert np.array_equal(rows.logits[2], saved_logits)
    assert np.array_equal(state(rows, 2), saved_state)
    rows.advance(np.array([2, 0]), np.array([6, 1]))
    twin = rows_of(kind, model, 1)
    for char in (5, 6):
        twin.advance(np.array([0]), np.array([char]))
    assert np.array_equal(twin.logits[0], rows.logits[2])


@pytest.mark.parametrize(
    ("kind", "cell"), [("kernel", "lstm"), ("torch", "lstm"), ("torch", "gru")]
)
def test_read_and_load_state(make_model, kind, cell):
    """A row's state read out and loaded into other rows (of another instance) gives the
    logits the row had there and goes on as the row it came from; read_state gives
    float32 copies, (L, H) each."""
    model = make_model(cell=cell)
    rows = rows_of(kind, model, 3)
    for char in (4, 9, 2):
        rows.advance(np.array([1]), np.array([char]))
    arrays = rows.read_state(1)
    assert len(arrays) == (2 if cell == "lstm" else 1)
    shape = (model.config.num_layers, model.config.hidden_size)
    assert all(a.shape == shape and a.dtype == np.float32 for a in arrays)
    saved = [a.copy() for a in arrays]
    logits = rows.logits[1].copy()  # after the arrays' state
    rows.advance(np.array([1]), np.array([7]))  # the arrays read are copies: they stay
    assert all(np.array_equal(a, b) for a, b in zip(arrays, saved, strict=True))
    other = rows_of(kind, model, 12)
    other.advance(np.array([0, 3]), np.array([5, 5]))
    kept = other.logits[0].copy()
    other.load_state(3, arrays)
    other.load_state(9, arrays)
    other.load_logits(np.array([3, 9]))  # as the step that reached the state gave them
    assert np.array_equal(other.logits[3], logits) and np.array_equal(other.logits[9], logits)
    other.advance(np.array([3]), np.array([7]))
    assert np.array_equal(other.logits[3], rows.logits[1])
    assert np.array_equal(state(other, 3), state(rows, 1))
    assert state(other, 0).any() and np.array_equal(other.logits[0], kept)  # others alone


@pytest.mark.parametrize(("kind", "torch_threads"), [("kernel", 1), ("torch", 1), ("torch", 2)])
def test_a_row_is_bit_identical_whatever_shares_its_step(model, kind, torch_threads):
    """Counts below and above MIN_ROWS (the torch backend pads to it), other slots. With
    2 threads MKL splits a 9- to 11-row product so that its last rows get other bits."""
    torch.set_num_threads(torch_threads)  # the conftest sets it back
    rng = np.random.default_rng(0)
    ours = rng.integers(0, 23, 12)
    results = []
    for count, slot in [(1, 0), (3, 7), (MIN_ROWS, 2), (MIN_ROWS + 1, 39), (40, 20)]:
        rows = rows_of(kind, model, 40)
        others = np.setdiff1d(np.arange(40), [slot])[: count - 1]
        step_rows = np.sort(np.append(others, slot))
        for char in ours:
            ids = rng.integers(0, 23, count)
            ids[np.searchsorted(step_rows, slot)] = char
            rows.advance(step_rows, ids)
        results.append((rows.logits[slot].copy(), state(rows, slot)))
    for logits, hidden in results[1:]:
        assert np.array_equal(logits, results[0][0]) and np.array_equal(hidden, results[0][1])


@pytest.mark.parametrize("count", [16, 17, 40])
def test_rows_split_over_threads_match_one_thread(model, count):
    rng = np.random.default_rng(1)
    steps = [rng.integers(0, 23, count) for _ in range(5)]
    results = []
    for threads in (1, 2, 3):
        rows = KernelRows(model, count, threads)
        for ids in steps:
            rows.advance(np.arange(count), ids)
        results.append(rows.logits.copy())
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


@pytest.mark.parametrize(("kind", "threads"), [("kernel", 1), ("kernel", 2), ("torch", 1)])
def test_sample_and_advance_is_sample_then_advance(model, kind, threads):
    """The fused call (the kernel draws and steps 5 times in one compiled call per thread,
    keeping each draw in a StepBlock) draws the same characters, ends the same rows at the
    same characters and reaches the same states as drawing, then advancing, one at a time."""
    count = 20
    results = []
    for fused in (True, False):
        rows = rows_of(kind, model, count, threads)
        sampler = SamplerRows(count, 23)
        tables = AutomatonPool(23).tables
        for row in range(count):
            params = GenerationParams(prime=(row % 23,), length=50 + row, seed=row, top_k=row % 5)
            sampler.assign(row, params, np.array([row % 23]))
        live = np.arange(count)
        rows.advance(live, live % 23)
        drawn: list[list[int]] = [[] for _ in range(count)]
        block = StepBlock.empty(5, count)
        while len(live):  # past a block of uniform numbers (64), to each row's length
            if fused:
                sampler.refill(live, block.steps)
                rows.sample_and_advance(live, sampler, tables, block)
                for row in live.tolist():
                    drawn[row] += block.ids[: block.counts[row], row].tolist()
                ended = block.status[block.counts[live] - 1, live] != RUNNING
                live = live[~ended]
            else:
                running = sample_rows(
                    live, rows.logits, sampler.settings, sampler.state, tables, sampler.out
                )
                rows.advance(running, sampler.out.ids[running])
                for row in live.tolist():
                    drawn[row].append(int(sampler.out.ids[row]))
                sampler.refill(running)
                live = running
        results.append((drawn, rows.logits.copy()))
    assert results[0][0] == results[1][0]
    assert [len(chars) for chars in results[0][0]] == [50 + row for row in range(count)]
    assert np.array_equal(results[0][1], results[1][1])


def test_kernel_supports_float32_lstms_on_the_cpu(make_model):
    assert kernel_supported(make_model())
    gru = make_model(cell="gru")
    assert not kernel_supported(gru) and not kernel_supported(make_model().double())
    with pytest.raises(ValueError, match="float32 LSTM"):
        KernelRows(gru, 1)
    with pytest.raises(ValueError, match="threads"):
        KernelRows(make_model(), 1, threads=0)


@pytest.mark.parametrize("call", ["advance", "sample_and_advance"])
def test_a_step_does_not_wait_for_a_helper_thread_that_is_held_up(model, call):
    """The threads take a step's rows in pieces: while the helper thread is held up (here
    busy with something else), this thread takes every piece and the step ends, with the
    same numbers as on one thread."""
    count = 40
    results = []
    for threads in (1, 2):
        rows = KernelRows(model, count, threads)
        sampler = SamplerRows(count, 23)
        for row in range(count):
            params = GenerationParams(prime=(1,), length=100, seed=row, top_k=3)
            sampler.assign(row, params, np.array([1]))
        block = StepBlock.empty(4, count)
        live = np.arange(count)
        rows.advance(live, live % 23)
        release = threading.Event()
        if threads == 2:
            rows._pool.submit(release.wait)  # the helper's only thread is taken
        done = threading.Event()

        def step(rows=rows, sampler=sampler, block=block, live=live, done=done):
            if call == "advance":
                rows.advance(live, (live * 7) % 23)
            else:
                sampler.refill(live, block.steps)
                rows.sample_and_advance(live, sampler, AutomatonPool(23).tables, block)
            done.set()

        threading.Thread(target=step, daemon=True).start()
        finished = done.wait(30)
        release.set()
        assert finished, "the step waited for the held-up helper"
        results.append((rows.logits.copy(), block.ids.copy()))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
