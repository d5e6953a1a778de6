import numpy as np
import pytest
import torch

from model.decoding.step import lstm_rows_step, step_weights


def state_arrays(model, rows):
    config = model.config
    h = np.zeros((config.num_layers, rows, config.hidden_size), np.float32)
    gates = np.zeros((rows, 4 * config.hidden_size), np.float32)
    logits = np.zeros((rows, config.vocab_size), np.float32)
    return h, np.zeros_like(h), gates, logits


@pytest.mark.parametrize(
    ("layers", "hidden", "vocab"), [(1, 12, 11), (2, 13, 23), (3, 8, 5), (2, 33, 17), (1, 1, 3)]
)
def test_kernel_steps_match_the_network(make_model, layers, hidden, vocab):
    """Every step's logits and the final states, against model(ids), across layer counts
    and widths that leave a tail in the unrolled loops."""
    model = make_model(vocab_size=vocab, hidden_size=hidden, num_layers=layers, seed=layers)
    ids = torch.randint(0, vocab, (5, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, (h_expected, c_expected) = model(ids)  # (B, T, V); (L, B, H) each
    weights = step_weights(model)
    h, c, gates, logits = state_arrays(model, 7)
    rows = np.array([6, 0, 3, 2, 5])  # any slots, in any order
    for t in range(ids.shape[1]):
        lstm_rows_step(rows, ids[:, t].contiguous().numpy(), weights, h, c, gates, logits)
        np.testing.assert_allclose(logits[rows], expected[:, t].numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(h[:, rows], h_expected.numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(c[:, rows], c_expected.numpy(), atol=2e-5, rtol=0)
    untouched = [1, 4]
    assert not h[:, untouched].any() and not c[:, untouched].any() and not logits[untouched].any()


def test_an_empty_step_changes_nothing(model):
    h, c, gates, logits = state_arrays(model, 3)
    h += 1
    none = np.zeros(0, np.int64)
    lstm_rows_step(none, none, step_weights(model), h, c, gates, logits)
    assert (h == 1).all() and not c.any() and not logits.any()


@pytest.mark.parametrize("hidden", [33, 8])
def test_a_row_is_bit_identical_whatever_shares_its_step(make_model, hidden):
    """The same row stepped alone, paired, as the odd row out, in another slot, and beside
    rows whose states differ: the same bits (odd width: the k loop's tail runs too)."""
    model = make_model(vocab_size=23, hidden_size=hidden)
    weights = step_weights(model)
    rng = np.random.default_rng(0)
    ours = [1, 5, 7, 2, 9, 0, 22, 3, 3, 14]
    results = []
    # (rows in the step, our position among them, our slot)
    for count, position, slot in [(1, 0, 0), (2, 1, 4), (3, 2, 7), (5, 2, 1), (17, 16, 9)]:
        h, c, gates, logits = state_arrays(model, 20)
        others = rng.choice([r for r in range(20) if r != slot], count - 1, replace=False)
        rows = np.insert(others, position, slot)
        for our_id in ours:
            ids = rng.integers(0, 23, size=count)
            ids[position] = our_id
            lstm_rows_step(rows, ids, weights, h, c, gates, logits)
        results.append((logits[slot].copy(), h[:, slot].copy(), c[:, slot].copy()))
    first = results[0]
    for result in results[1:]:
        for array, expected in zip(result, first, strict=True):
            assert np.array_equal(array, expected)


def test_a_row_does_not_depend_on_its_partners_state(make_model):
    """The partner row's state differs wildly (large values): ours is unchanged."""
    model = make_model(vocab_size=23, hidden_size=13, num_layers=3)
    weights = step_weights(model)
    results = []
    for partner_scale in (0.0, 1e3):
        h, c, gates, logits = state_arrays(model, 2)
        h[:, 1] = partner_scale
        c[:, 1] = -partner_scale
        for char in (4, 8, 15):
            lstm_rows_step(np.array([0, 1]), np.array([char, 1]), weights, h, c, gates, logits)
        results.append(logits[0].copy())
    assert np.array_equal(results[0], results[1])
