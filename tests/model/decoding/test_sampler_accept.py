"""The chain's `accept`: how a drawn character ends a row (stop string, regex, length) and
how many of its last characters are held back, against brute-force references."""

import numpy as np
import pytest

from model.decoding.automaton import AutomatonPool
from model.decoding.params import GenerationParams
from model.decoding.regex import RegexLimits, compile_regex
from model.decoding.sampler import (
    FINISHED_LENGTH,
    FINISHED_REGEX,
    FINISHED_STOP,
    RUNNING,
    sample_rows,
)
from model.decoding.sampler_rows import SamplerRows

V = 23


def write(params, text_ids, automaton=None):
    """Force `text_ids` through one row's chain (logits ±30), stopping at the first status
    other than RUNNING → [(status, held)] per character written."""
    sampler = SamplerRows(1, V)
    pool = AutomatonPool(V)
    start = pool.acquire(automaton) if automaton is not None else -1
    sampler.assign(0, params, np.asarray(params.prime, np.int64), start)
    rows = np.array([0])
    results = []
    for char in text_ids:
        logits = np.full((1, V), -30, np.float32)
        logits[0, char] = 30
        sample_rows(rows, logits, sampler.settings, sampler.state, pool.tables, sampler.out)
        assert sampler.out.ids[0] == char
        results.append((int(sampler.out.status[0]), int(sampler.out.held[0])))
        if sampler.out.status[0] != RUNNING:
            break
        sampler.refill(rows)
    return results


def expected_stops(stops, text):
    """Brute force: after each char, has a stop string just been completed (→ its length
    held), else the longest proper prefix of a stop that ends the text (held back)."""
    results = []
    for end in range(1, len(text) + 1):
        written = text[:end]
        done = [stop for stop in stops if written.endswith(stop)]
        if done:
            return [*results, (FINISHED_STOP, len(done[0]))]
        held = max(
            (
                size
                for stop in stops
                for size in range(1, len(stop))
                if written.endswith(stop[:size])
            ),
            default=0,
        )
        results.append((RUNNING, held))
    return results


def request(vocab, stops=(), length=1000, prime="a"):
    return GenerationParams(
        prime=tuple(vocab.encode(prime)),
        length=length,
        seed=0,
        stop=tuple(tuple(vocab.encode(stop)) for stop in stops),
    )


@pytest.mark.parametrize(
    ("stops", "text"),
    [
        (["aab"], "aaab"),  # KMP: the third a keeps "aa" matched
        (["abab"], "abaabababq"),
        (["abc", "abd", "b"], "aab"),
        (["aaaa", "aab"], "aaaab"),
        (["cab", "abcq"], "abcabcq"),
        (["ba"], "abbbbbbbbbbbbbbbbbbba"),
        (["abc"], "ababababqabab"),  # never completes: the held chars are released
    ],
)
def test_stop_strings_are_matched_like_brute_force(vocab, stops, text):
    result = write(request(vocab, stops), vocab.encode(text))
    assert result == expected_stops(stops, text)


def test_random_stops_and_texts_against_brute_force(vocab):
    rng = np.random.default_rng(0)
    for _ in range(200):
        stops = ["".join(rng.choice(list("ab"), rng.integers(1, 6))) for _ in range(4)]
        text = "".join(rng.choice(list("abc"), 30, p=[0.45, 0.45, 0.1]))
        assert write(request(vocab, stops), vocab.encode(text)) == expected_stops(stops, text)


def test_a_stop_in_the_prime_or_straddling_it_does_not_stop(vocab):
    assert write(request(vocab, ["ab"], prime="cab"), vocab.encode("cd")) == [
        (RUNNING, 0),
        (RUNNING, 0),
    ]
    # The prime ends in "a": the first "b" written does not complete "ab".
    assert write(request(vocab, ["ab"], prime="ca"), vocab.encode("bab"))[:2] == [
        (RUNNING, 0),
        (RUNNING, 1),
    ]


def test_length(vocab):
    result = write(request(vocab, length=5), vocab.encode("abcdefg"))
    assert result == [(RUNNING, 0)] * 4 + [(FINISHED_LENGTH, 0)]
    # A partial stop at the last character: the length ends the row (output.finish
    # releases the held chars).
    assert write(request(vocab, ["cd"], length=3), vocab.encode("abcd"))[-1] == (
        FINISHED_LENGTH,
        1,
    )
    # A stop completed by the last character allowed: the stop wins, it is cut.
    assert write(request(vocab, ["bc"], length=3), vocab.encode("abc"))[-1] == (FINISHED_STOP, 2)


@pytest.mark.parametrize(
    ("pattern", "text", "statuses"),
    [
        ("ab", "ab", [RUNNING, FINISHED_REGEX]),
        ("ab|abc", "abc", [RUNNING, RUNNING, FINISHED_REGEX]),  # "ab" is final but open
        ("a+", "aaaa", [RUNNING] * 4),
        ("(ab)*c", "ababc", [RUNNING] * 4 + [FINISHED_REGEX]),
    ],
)
def test_regex_ends_a_row_in_a_final_state_with_no_way_on(vocab, pattern, text, statuses):
    automaton = compile_regex(pattern, vocab, RegexLimits())
    result = write(request(vocab), vocab.encode(text), automaton)
    assert [status for status, _ in result] == statuses
