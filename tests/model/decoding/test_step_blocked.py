"""The blocked decoding step (model/decoding/step.py): a row's numbers, bit for bit, do not
depend on how many rows share its step, where it sits among them (a full block of ROWS or
the remainder), its slot, the thread that steps it, or whether scoring reads it; and they
agree with the network."""

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.decoding.network_rows import KernelRows
from model.decoding.step import (
    PANEL,
    ROWS,
    lstm_layer_sequence,
    lstm_rows_step,
    pack_panels,
    step_weights,
)
from model.network import CharRNN

# 4H = 132 and V = 71: both end in a partial panel.
VOCAB, HIDDEN = 71, 33


def lstm(vocab=VOCAB, hidden=HIDDEN, layers=2, seed=0) -> CharRNN:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers)
    return CharRNN(config).eval()


def state_arrays(model: CharRNN, capacity: int) -> tuple[np.ndarray, ...]:
    """h, c (L, R, H), gates (R, 4H), logits (R, V): zeros."""
    config = model.config
    h = np.zeros((config.num_layers, capacity, config.hidden_size), np.float32)
    gates = np.zeros((capacity, 4 * config.hidden_size), np.float32)
    logits = np.zeros((capacity, config.vocab_size), np.float32)
    return h, np.zeros_like(h), gates, logits


PROBE = [3, 17, 0, 70, 42, 8, 8, 65]  # the ids our rows are fed, one a step


def run_probes(model, weights, count: int, positions: list[int], seed: int) -> list[tuple]:
    """Step `count` rows in scattered slots, PROBE fed at each of `positions` (the others get
    random ids from random states); → (logits, h, c) of each probe row after the last step."""
    rng = np.random.default_rng(seed)
    capacity = count + 5
    h, c, gates, logits = state_arrays(model, capacity)
    slots = rng.permutation(capacity)[:count]
    others = np.setdiff1d(np.arange(count), positions)
    h[:, slots[others]] = rng.uniform(-1, 1, (h.shape[0], len(others), h.shape[2]))
    c[:, slots[others]] = rng.uniform(-3, 3, (c.shape[0], len(others), c.shape[2]))
    for char in PROBE:
        ids = rng.integers(0, model.config.vocab_size, count)
        ids[positions] = char
        lstm_rows_step(slots, ids, weights, h, c, gates, logits)
    return [(logits[s].copy(), h[:, s].copy(), c[:, s].copy()) for s in slots[positions]]


def assert_same_bits(results: list[tuple], expected: tuple) -> None:
    for result in results:
        for array, reference in zip(result, expected, strict=True):
            assert array.tobytes() == reference.tobytes()


@pytest.mark.parametrize("hidden", [HIDDEN, 16])
def test_a_row_is_bit_identical_in_any_batch_position_and_slot(hidden):
    model = lstm(hidden=hidden)
    weights = step_weights(model)
    (alone,) = run_probes(model, weights, 1, [0], seed=0)
    for count in (2, 3, 5, 8, 17, 64, 257):
        # first, last, and one in the middle: in full blocks and in the remainder
        positions = sorted({0, count // 2, count - 1, count - count % ROWS})
        positions = [p for p in positions if p < count]
        assert_same_bits(run_probes(model, weights, count, positions, seed=count), alone)


def test_rows_in_a_block_do_not_see_each_other_even_when_a_partner_is_not_finite():
    model = lstm(layers=3)
    weights = step_weights(model)
    results = []
    for partner in (0.0, 1e30, np.inf, np.nan):
        h, c, gates, logits = state_arrays(model, ROWS)
        h[:, 1:], c[:, 1:] = partner, -partner
        for char in PROBE:
            ids = np.array([char, 1, 2, 3])
            lstm_rows_step(np.arange(ROWS), ids, weights, h, c, gates, logits)
        assert np.isfinite(logits[0]).all()
        results.append((logits[0].copy(), h[:, 0].copy(), c[:, 0].copy()))
    assert_same_bits(results[1:], results[0])


@pytest.mark.parametrize(
    ("layers", "hidden", "vocab"), [(1, 16, 64), (2, HIDDEN, VOCAB), (3, 40, 130), (2, 1, 3)]
)
@pytest.mark.parametrize("count", [1, 3, 4, 9])
def test_the_step_matches_the_network(layers, hidden, vocab, count):
    """Every step's logits and the final state against model(ids): widths of exactly one
    panel, a partial one, several with a tail; a full block, a remainder, both."""
    model = lstm(vocab, hidden, layers, seed=layers)
    ids = torch.randint(0, vocab, (count, 7), generator=torch.Generator().manual_seed(count))
    with torch.no_grad():
        expected, (h_expected, c_expected) = model(ids)  # (B, T, V); (L, B, H) each
    weights = step_weights(model)
    h, c, gates, logits = state_arrays(model, count + 2)
    rows = np.random.default_rng(count).permutation(count + 2)[:count]
    for t in range(ids.shape[1]):
        lstm_rows_step(rows, ids[:, t].contiguous().numpy(), weights, h, c, gates, logits)
        np.testing.assert_allclose(logits[rows], expected[:, t].numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(h[:, rows], h_expected.numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(c[:, rows], c_expected.numpy(), atol=2e-5, rtol=0)
    untouched = np.setdiff1d(np.arange(count + 2), rows)
    assert not h[:, untouched].any() and not logits[untouched].any()


@pytest.mark.parametrize("count", [16, 17, 40, 64, 257])
def test_rows_split_over_threads_match_one_thread(count):
    """KernelRows' parts put a row in another thread, another block and another place in
    its block: the same bits at 1, 2 and 3 threads, and the same as the row alone."""
    model = lstm()
    rng = np.random.default_rng(count)
    steps = [rng.integers(0, VOCAB, count) for _ in range(5)]
    results = []
    for threads in (1, 2, 3):
        rows = KernelRows(model, capacity=count, threads=threads)
        for ids in steps:
            rows.advance(np.arange(count), ids)
        results.append((rows.logits.copy(), rows.h.copy(), rows.c.copy()))
    assert_same_bits(results[1:], results[0])
    for row in (0, count // 2, count - 1):
        alone = KernelRows(model, capacity=1)
        for ids in steps:
            alone.advance(np.zeros(1, np.int64), ids[row : row + 1])
        expected = (alone.logits[0], alone.h[:, 0], alone.c[:, 0])
        assert_same_bits([(results[1][0][row], results[1][1][:, row], results[1][2][:, row])],
                         expected)  # fmt: skip


def test_scoring_reads_the_first_layer_as_the_step_does():
    """lstm_layer_sequence (model/scoring.py's recurrence) over a text gives the first
    layer's state bit for bit as the step gives it to a row in a full block."""
    model = lstm()
    weights = step_weights(model)
    text = np.array(PROBE * 3)
    with torch.no_grad():
        table = model.input_table().numpy()  # (V, 4H)
        recurrent = np.ascontiguousarray(model.layer_weights(0)[1].t().numpy())  # (H, 4H)
    h_seq, c_seq = np.zeros((1, HIDDEN), np.float32), np.zeros((1, HIDDEN), np.float32)
    out = np.empty((len(text), HIDDEN), np.float32)
    lstm_layer_sequence(table[text], recurrent, h_seq, c_seq, out)

    h, c, gates, logits = state_arrays(model, 2 * ROWS)
    rows = np.arange(ROWS) + 1  # our row first in a full block
    for t, char in enumerate(text):
        lstm_rows_step(rows, np.array([char, 5, 6, 7]), weights, h, c, gates, logits)
        assert out[t].tobytes() == h[0, 1].tobytes()
    assert c_seq[0].tobytes() == c[0, 1].tobytes()


@pytest.mark.parametrize("width", [1, PANEL - 1, PANEL, PANEL + 1, 3 * PANEL + 7])
def test_pack_panels_layout(width):
    weight = np.random.default_rng(width).standard_normal((5, width)).astype(np.float32)
    panels = pack_panels(weight)
    count = -(-width // PANEL)
    assert panels.shape == (count, 5, PANEL) and panels.dtype == np.float32
    assert panels.flags.c_contiguous
    unpacked = np.concatenate(list(panels), axis=1)  # (K, count · PANEL)
    assert np.array_equal(unpacked[:, :width], weight)
    assert not unpacked[:, width:].any()  # the padding of the last panel


def test_step_weights_are_panels_of_the_transposed_weights():
    model = lstm(layers=3)
    weights = step_weights(model)
    w_ih, w_hh, b_ih, b_hh = (w.detach().numpy() for w in model.layer_weights(2))
    assert np.array_equal(weights[2][1], pack_panels(np.ascontiguousarray(w_ih.T)))
    assert np.array_equal(weights[3][1], pack_panels(np.ascontiguousarray(w_hh.T)))
    assert np.array_equal(weights[4][1], b_ih + b_hh)
    head = model.head.weight.detach().numpy()
    assert np.array_equal(weights[5], pack_panels(np.ascontiguousarray(head.T)))
    assert all(w.dtype == np.float32 and w.flags.c_contiguous for w in weights)
