"""The sampler chain's links against a NumPy reference of their documented semantics.

The compiled chain draws by inverse CDF, so its whole distribution shows in its draws:
one row draws just below and one just above every boundary of the reference's
cumulative distribution (likeliest first, ties by id); every draw must be the reference's
character there. A missing, extra or mis-weighted character moves a boundary and fails.
"""

import numpy as np
import pytest

from model.decoding.automaton import AutomatonPool
from model.decoding.output import CHOSEN, ID, TOP_IDS, TOP_LOGPROBS
from model.decoding.params import GenerationParams
from model.decoding.regex import RegexLimits, compile_regex
from model.decoding.sampler import (
    FAILED_NO_CANDIDATE,
    FAILED_NON_FINITE,
    FAILURES,
    FINISHED_REGEX_STOP,
    RUNNING,
    filtered_probs,
    prompt_logprob,
    sample_rows,
)
from model.decoding.sampler_rows import SamplerRows

V = 23
EDGE = 1e-9  # how far below/above a boundary of the cumulative distribution a row draws


def reference(
    logits,
    prime=(),
    generated=(),
    *,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    min_p=0.0,
    repetition_penalty=1.0,
    repeat_last_n=64,
    frequency_penalty=0.0,
    presence_penalty=0.0,
    logit_bias=(),
    allowed=None,
):
    """The documented chain: → (distribution (V,), order: likeliest first, ties by id), or
    None when no character is allowed."""
    scores = np.asarray(logits, np.float64).copy()
    for char, bias in logit_bias:  # -100 bans, anything else shifts
        scores[char] = -np.inf if bias <= -100 else scores[char] + bias
    history = [*prime, *generated]
    window = set(history[len(history) - repeat_last_n :]) if repeat_last_n else set()
    if repetition_penalty != 1.0:  # divide a positive logit, multiply a negative one
        for char in window:
            value = scores[char]
            scores[char] = value / repetition_penalty if value > 0 else value * repetition_penalty
    counts = np.bincount(np.asarray(generated, np.int64), minlength=V)  # generated only
    scores -= frequency_penalty * counts + presence_penalty * (counts > 0)
    if allowed is not None:
        scores[~allowed] = -np.inf
    if np.isneginf(scores).all():
        return None
    order = np.argsort(-scores, kind="stable")
    probs = np.zeros(V)
    if temperature == 0:
        probs[order[0]] = 1.0
        return probs, order
    probs = np.exp((scores - scores.max()) / temperature)
    probs /= probs.sum()
    if 0 < top_k < V:
        probs[order[top_k:]] = 0.0
        probs /= probs.sum()
    cumulative = np.cumsum(probs[order])
    if top_p < 1.0:  # the smallest likeliest set reaching top_p
        probs[order[int(np.argmax(cumulative >= top_p)) + 1 :]] = 0.0
        probs /= probs.sum()
    if min_p > 0.0:
        probs[probs < min_p * probs.max()] = 0.0
        probs /= probs.sum()
    return probs, order


def make_params(prime=(1,), **settings):
    return GenerationParams(prime=tuple(prime), length=1000, seed=0, **settings)


def prepared(params, generated=(), copies=2 * V + 2, automaton=None):
    """`copies` rows with the request's settings, each having generated `generated`
    through the chain itself (forced by logits of ±30)."""
    sampler = SamplerRows(copies, V)
    pool = AutomatonPool(V)
    start = pool.acquire(automaton) if automaton is not None else -1
    for row in range(copies):
        sampler.assign(row, params, np.asarray(params.prime, np.int64), start)
    rows = np.arange(copies)
    for char in generated:
        forcing = np.full((copies, V), -30, np.float32)
        forcing[:, char] = 30
        assert len(sample_rows(rows, forcing, *chain(sampler, pool.tables))) == copies
        assert (sampler.out.ids == char).all()
        sampler.refill(rows)
    return sampler, pool.tables


def chain(sampler, tables):
    return sampler.settings, sampler.state, tables, sampler.out


def draw(sampler, tables, logits, uniforms):
    """Row r draws once from `logits` (V,) with uniforms[r] → (ids, statuses)."""
    rows = np.arange(len(uniforms))
    sampler.state.uniforms[rows, sampler.state.positions[rows]] = uniforms
    tiled = np.tile(np.asarray(logits, np.float32), (len(rows), 1))
    sample_rows(rows, tiled, *chain(sampler, tables))
    return sampler.out.ids[rows].copy(), sampler.out.status[rows].copy()


def assert_chain_draws(expected, sampler, tables, logits):
    probs, order = expected
    kept = [char for char in order if probs[char] > 0]
    assert min(probs[kept]) > 100 * EDGE, "a test distribution needs no near-zero chars"
    cumulative = np.cumsum(probs[kept])
    uniforms, wanted = [0.0], [kept[0]]
    for k in range(len(kept) - 1):
        uniforms += [cumulative[k] - EDGE, cumulative[k] + EDGE]
        wanted += [kept[k], kept[k + 1]]
    uniforms.append(1 - 1e-12)
    wanted.append(kept[-1])
    assert len(uniforms) <= len(sampler.settings.temperature)
    ids, statuses = draw(sampler, tables, logits, uniforms)
    assert not set(statuses[: len(uniforms)].tolist()) & set(FAILURES)
    assert ids[: len(uniforms)].tolist() == [int(char) for char in wanted]


@pytest.fixture
def logits():
    """Mixed signs, spread enough that every char keeps a real probability."""
    return np.random.default_rng(3).uniform(-2.5, 2.5, V).astype(np.float32)


TRUNCATIONS = [
    {},
    {"temperature": 0.5},
    {"temperature": 3.0},
    {"top_k": 1},
    {"top_k": 5},
    {"top_k": V + 10},
    {"top_p": 0.3},
    {"top_p": 0.9},
    {"min_p": 0.2},
    {"min_p": 1.0},
    {"temperature": 0.7, "top_k": 8, "top_p": 0.8},
    {"temperature": 1.5, "top_k": 12, "top_p": 0.95, "min_p": 0.1},
    {"top_p": 0.6, "min_p": 0.3},
]


@pytest.mark.parametrize("settings", TRUNCATIONS)
def test_temperature_top_k_top_p_min_p(logits, settings):
    sampler, tables = prepared(make_params(**settings))
    assert_chain_draws(reference(logits, **settings), sampler, tables, logits)


def test_temperature_zero_is_greedy_and_ties_go_to_the_lowest_id(logits):
    tied = logits.copy()
    tied[[4, 9, 17]] = tied.max() + 1
    sampler, tables = prepared(make_params(temperature=0.0))
    ids, _ = draw(sampler, tables, tied, np.linspace(0, 0.999, 20))
    assert (ids[:20] == 4).all()
    sampler, tables = prepared(make_params(top_k=2))
    assert_chain_draws(reference(tied, top_k=2), sampler, tables, tied)  # 4 and 9 kept


@pytest.mark.parametrize(
    ("bias", "temperature"),
    [
        (((3, -100.0), (7, 2.5), (8, -1.0)), 1.0),
        # At a high temperature ±100 leaves visible probabilities: -99.9 only shifts.
        (((0, 100.0), (9, -60.0)), 60.0),
        (((5, -99.9), (6, -100.0)), 60.0),
    ],
)
def test_logit_bias(logits, bias, temperature):
    sampler, tables = prepared(make_params(logit_bias=bias, temperature=temperature))
    expected = reference(logits, logit_bias=bias, temperature=temperature)
    for char, value in bias:
        assert (expected[0][char] == 0) == (value <= -100)
    assert_chain_draws(expected, sampler, tables, logits)


@pytest.mark.parametrize("penalty", [1.8, 0.6])
@pytest.mark.parametrize("last_n", [0, 1, 4, 9, 64])
def test_repetition_penalty_over_the_last_n_of_prime_and_output(logits, penalty, last_n):
    prime, generated = (1, 2, 3, 4, 5, 2), (6, 7, 1, 6)
    params = make_params(prime, repetition_penalty=penalty, repeat_last_n=last_n)
    sampler, tables = prepared(params, generated)
    settings = {"repetition_penalty": penalty, "repeat_last_n": last_n}
    assert_chain_draws(reference(logits, prime, generated, **settings), sampler, tables, logits)


def test_a_char_that_left_the_window_is_no_longer_penalised(logits):
    """prime [4, 0, 0]: 4 is penalised at first; 3 characters later it has left the window."""
    logits = logits.copy()
    logits[4] = 2.0  # positive: divided while in the window
    params = make_params((4, 0, 0), repetition_penalty=3.0, repeat_last_n=3)
    for generated in [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6, 7)]:
        sampler, tables = prepared(params, generated)
        expected = reference(logits, (4, 0, 0), generated, repetition_penalty=3, repeat_last_n=3)
        free = reference(logits, repetition_penalty=1.0, generated=generated)
        penalised = 4 in [4, 0, 0, *generated][-3:]
        assert (expected[0][4] < free[0][4] * 0.9) == penalised
        assert_chain_draws(expected, sampler, tables, logits)


def test_repetition_window_across_a_long_history(logits):
    """A prime longer than the ring (2,048), and the window sliding over it."""
    rng = np.random.default_rng(0)
    prime = tuple(rng.integers(0, 8, 3000).tolist())  # chars 8.. never in the prime
    generated = (9, 10, *rng.integers(0, 23, 150).tolist())
    for last_n in (2048, 100):
        params = make_params(prime, repetition_penalty=2.0, repeat_last_n=last_n)
        sampler, tables = prepared(params, generated)
        expected = reference(logits, prime, generated, repetition_penalty=2, repeat_last_n=last_n)
        assert_chain_draws(expected, sampler, tables, logits)


@pytest.mark.parametrize(("frequency", "presence"), [(0.5, 0.0), (0.0, 1.5), (-1.0, 2.0), (2, -2)])
def test_frequency_and_presence_count_generated_chars_only(logits, frequency, presence):
    prime, generated = (3, 3, 3, 8, 8), (5, 5, 5, 6, 3, 5)
    params = make_params(prime, frequency_penalty=frequency, presence_penalty=presence)
    sampler, tables = prepared(params, generated)
    settings = {"frequency_penalty": frequency, "presence_penalty": presence}
    expected = reference(logits, prime, generated, **settings)
    assert_chain_draws(expected, sampler, tables, logits)
    assert np.isclose(  # char 8 is only in the prime: untouched
        expected[0][8] / expected[0][0], np.exp(np.float64(logits[8]) - logits[0]), rtol=1e-9
    )


def test_regex_mask_allows_only_the_automatons_characters(vocab, logits):
    automaton = compile_regex("[aeiou]+t", vocab, RegexLimits())
    for generated in [(), tuple(vocab.encode("e")), tuple(vocab.encode("eia"))]:
        sampler, tables = prepared(make_params(), generated, automaton=automaton)
        state = int(sampler.state.regex_state[0])
        allowed = tables.next[state] >= 0
        chars = "aeiou" if not generated else "aeiout"
        assert allowed.tolist() == [char in chars for char in vocab.chars]
        assert_chain_draws(reference(logits, allowed=allowed), sampler, tables, logits)


EVERY_LINK = {
    "temperature": 0.8,
    "top_k": 9,
    "top_p": 0.9,
    "min_p": 0.05,
    "repetition_penalty": 1.3,
    "repeat_last_n": 6,
    "frequency_penalty": 0.4,
    "presence_penalty": 0.3,
    "logit_bias": ((14, -100.0), (5, 1.5), (20, 50.0)),  # m banned, s masked
}


def test_every_link_at_once(vocab, logits):
    automaton = compile_regex("[a-m ]+u", vocab, RegexLimits())  # "abc a": not a match yet
    prime, generated = (2, 3, 4, 4, 1), tuple(vocab.encode("abc a"))
    params = make_params(prime, **EVERY_LINK)
    sampler, tables = prepared(params, generated, automaton=automaton)
    allowed = tables.next[sampler.state.regex_state[0]] >= 0
    expected = reference(logits, prime, generated, allowed=allowed, **EVERY_LINK)
    assert_chain_draws(expected, sampler, tables, logits)


def assert_chain_ends(expected, allowed, sampler, tables, logits):
    """At an accepting state: a draw in a character's share of the unconstrained chain's
    distribution writes it if the pattern allows it, and otherwise ends the row with
    nothing written and nothing else changed."""
    probs, order = expected
    kept = [char for char in order if probs[char] > 0]
    assert any(allowed[kept]) and not all(allowed[kept]), "a test needs both kinds"
    assert min(probs[kept]) > 100 * EDGE, "a test distribution needs no near-zero chars"
    cumulative = np.concatenate([[0.0], np.cumsum(probs[kept])])
    uniforms, wanted = [], []
    for k, char in enumerate(kept):
        for target in (cumulative[k] + EDGE, cumulative[k + 1] - EDGE):
            uniforms.append(target)
            wanted.append(int(char) if allowed[char] else None)
    rows = np.arange(len(uniforms))
    before = int(sampler.state.regex_state[0]), int(sampler.state.generated[0])
    ids, statuses = draw(sampler, tables, logits, uniforms)
    for row, want in zip(rows.tolist(), wanted, strict=True):
        if want is None:
            assert statuses[row] == FINISHED_REGEX_STOP
            state = int(sampler.state.regex_state[row]), int(sampler.state.generated[row])
            assert state == before
        else:
            assert (ids[row], statuses[row]) == (want, RUNNING)
    # The share of "stop" is the mass the unconstrained chain gives the leaving characters.
    leaving = sum(probs[char] for char in kept if not allowed[char])
    assert 0 < leaving < 1


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"temperature": 0.5, "top_k": 12},
        {**EVERY_LINK, "logit_bias": ((14, -100.0), (5, 1.5), (20, 2.0))},  # s: +2, not +50
    ],
)
def test_at_an_accepting_state_leaving_characters_end_the_text(vocab, logits, settings):
    """ "[a-m ]+" has matched "abc a" and may go on: the row draws from the chain without
    the mask; a character outside [a-m ] ends it (FINISHED_REGEX_STOP)."""
    automaton = compile_regex("[a-m ]+", vocab, RegexLimits())
    prime, generated = (2, 3, 4, 4, 1), tuple(vocab.encode("abc a"))
    params = make_params(prime, **settings)
    sampler, tables = prepared(params, generated, automaton=automaton)
    state = int(sampler.state.regex_state[0])
    assert tables.final[state] and tables.open[state]
    allowed = tables.next[state] >= 0
    expected = reference(logits, prime, generated, **settings)  # no mask
    assert_chain_ends(expected, allowed, sampler, tables, logits)


def test_greedy_at_an_accepting_state_ends_if_the_likeliest_would_leave(vocab, logits):
    automaton = compile_regex("[a-m ]*", vocab, RegexLimits())  # the start accepts
    peak = logits.copy()
    for char, ends in (("c", False), ("t", True)):
        peak[vocab.encode(char)[0]] = logits.max() + 1
        sampler, tables = prepared(make_params(temperature=0.0), automaton=automaton)
        ids, statuses = draw(sampler, tables, peak, np.linspace(0, 0.999, 9))
        if ends:
            assert (statuses[:9] == FINISHED_REGEX_STOP).all()
        else:
            assert (statuses[:9] == RUNNING).all() and (ids[:9] == vocab.encode(char)[0]).all()
        peak = logits.copy()


def test_a_pattern_that_only_matches_nothing_ends_at_once(vocab, logits):
    """ "é?" over a vocabulary without "é": the start accepts and nothing may follow."""
    automaton = compile_regex("é?", vocab, RegexLimits())
    assert automaton.final[0] and not automaton.open[0]
    sampler, tables = prepared(make_params(), automaton=automaton)
    _, statuses = draw(sampler, tables, logits, np.linspace(0, 0.999, 9))
    assert (statuses[:9] == FINISHED_REGEX_STOP).all()


def test_every_char_banned_fails_the_row_alone(vocab, logits):
    """Row 0 bans every char by logit_bias, row 2 the only ones its regex allows; row 1,
    between them, draws as it would alone."""
    pool = AutomatonPool(V)
    start = pool.acquire(compile_regex("[ab]", vocab, RegexLimits()))
    ban_all = tuple((char, -100.0) for char in range(V))
    ban_ab = tuple((char, -100.0) for char in vocab.encode("ab"))
    sampler = SamplerRows(3, V)
    sampler.assign(0, make_params(logit_bias=ban_all), np.array([1]))
    sampler.assign(1, make_params(), np.array([1]))
    sampler.assign(2, make_params(logit_bias=ban_ab), np.array([1]), start)
    ids, statuses = draw(sampler, pool.tables, logits, [0.5, 0.5, 0.5])
    assert statuses.tolist() == [FAILED_NO_CANDIDATE, RUNNING, FAILED_NO_CANDIDATE]
    assert sampler.state.generated.tolist() == [0, 1, 0]
    assert sampler.state.positions.tolist() == [0, 1, 0]
    alone, tables = prepared(make_params(), copies=1)
    assert ids[1] == draw(alone, tables, logits, [0.5])[0][0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_fail_the_row_alone(logits, bad):
    params = [make_params(temperature=0.9, top_k=7), make_params(), make_params(top_p=0.5)]
    results = []
    for poisoned in (False, True):
        sampler = SamplerRows(3, V)
        for row, request in enumerate(params):
            sampler.assign(row, request, np.array([1, 2]))
        rows = np.arange(3)
        batch = np.tile(logits, (3, 1))
        batch[1, 5] = bad if poisoned else batch[1, 5]
        running = sample_rows(rows, batch, *chain(sampler, AutomatonPool(V).tables))
        results.append(
            (running, sampler.out.ids.copy(), sampler.out.status.copy(), sampler.state.counts)
        )
    (running, ids, status, _), (bad_running, bad_ids, bad_status, _) = results
    assert status.tolist() == [RUNNING] * 3 and running.tolist() == [0, 1, 2]
    assert bad_status.tolist() == [RUNNING, FAILED_NON_FINITE, RUNNING]
    assert bad_running.tolist() == [0, 2] and bad_ids[[0, 2]].tolist() == ids[[0, 2]].tolist()


def test_one_uniform_per_draw_even_when_greedy(logits):
    for settings in ({}, {"temperature": 0.0}, {"top_k": 1}):
        sampler, tables = prepared(make_params(**settings), copies=1)
        for step in range(70):  # past a block of 64
            assert sampler.state.positions[0] == step % 64
            draw(sampler, tables, logits, [0.5])
            sampler.refill(np.array([0]))


def test_filtered_probs_is_sorted_and_keeps_ties_in_vocabulary_order():
    probs, order, kept = filtered_probs(np.zeros(5), 1.0, 0, 1.0, 0.0)
    assert order.tolist() == [0, 1, 2, 3, 4] and kept == 5
    np.testing.assert_allclose(probs, 0.2)
    scores = np.log([0.5, 0.3, 0.15, 0.05])
    probs, order, kept = filtered_probs(scores, 1.0, 0, 0.7, 0.0)
    assert kept == 2 and order[:2].tolist() == [0, 1]
    np.testing.assert_allclose(probs, [0.625, 0.375, 0, 0], atol=1e-12)
    probs, _, kept = filtered_probs(np.array([0.0, -np.inf, -np.inf]), 1.0, 0, 1.0, 0.0)
    assert kept == 1 and probs.tolist() == [1.0, 0.0, 0.0]
    assert filtered_probs(np.full(3, -np.inf), 1.0, 0, 1.0, 0.0)[2] == 0


@pytest.mark.parametrize("count", [0, 1, 3, 5])
def test_logprob_record_ranks_the_likeliest_with_ties_by_id(count):
    """The record: the character, its log-softmax, and the `count` likeliest by descending
    logit, ties to the lowest id, whatever the order the vocabulary holds them in."""
    rng = np.random.default_rng(count)
    sampler = SamplerRows(1, V)
    for trial in range(200):
        # Few distinct values, so most rows hold ties, at the top and at the cut.
        row = rng.integers(-3, 3, V).astype(np.float32) * (0.5 if trial % 2 else 1.0)
        chosen = int(rng.integers(V))
        prompt_logprob(0, row[None, :], chosen, count, sampler.out)
        record = sampler.out.logprob_records[0]
        wide = row.astype(np.float64)
        log_softmax = wide - wide.max() - np.log(np.exp(wide - wide.max()).sum())
        top = np.argsort(-row, kind="stable")[:count]
        assert record[ID] == chosen
        assert record[CHOSEN] == pytest.approx(log_softmax[chosen], abs=1e-12)
        assert record[TOP_IDS : TOP_IDS + count].tolist() == top.tolist()
        np.testing.assert_allclose(
            record[TOP_LOGPROBS : TOP_LOGPROBS + count], log_softmax[top], atol=1e-12
        )
