import time

import interegular
import numpy as np
import pytest

from model.decoding import regex
from model.decoding.decoder import BatchDecoder
from model.decoding.output import RowOutput
from model.decoding.params import GenerationParams, ParamError
from model.decoding.regex import RegexCache, RegexLimits, check_length, compile_regex
from model.decoding.sampler import RUNNING

LIMITS = RegexLimits()


def walk(automaton, vocab, text):
    """The automaton's state after `text` (-1 once no match can follow)."""
    state = 0
    for char in vocab.encode(text):
        state = int(automaton.next[state, char])
        if state < 0:
            return -1
    return state


def test_a_single_path_pattern(vocab):
    automaton = compile_regex("abc", vocab, LIMITS)
    assert automaton.next.shape == (4, len(vocab)) and automaton.next.dtype == np.int32
    assert (automaton.next >= 0).sum() == 3  # one allowed move per state but the last
    for done, state in [("", 0), ("a", 1), ("ab", 2)]:
        state = walk(automaton, vocab, done)
        assert state >= 0 and automaton.open[state] and not automaton.final[state]
    end = walk(automaton, vocab, "abc")
    assert automaton.final[end] and not automaton.open[end]
    assert walk(automaton, vocab, "b") == -1 and walk(automaton, vocab, "abd") == -1
    assert automaton.nbytes == automaton.next.nbytes + 2 * 4


def test_only_states_that_can_still_match_are_kept(vocab):
    automaton = compile_regex("é|ab", vocab, LIMITS)  # é: not a character of the model
    allowed = automaton.next[0] >= 0
    assert allowed.tolist() == [char == "a" for char in vocab.chars]
    live = compile_regex("a[bc]*d|e", vocab, LIMITS)
    for text, state in [("a", True), ("abcb", True), ("abd", True), ("e", True), ("eb", False)]:
        assert (walk(live, vocab, text) >= 0) == state, text


def decode(model, params):
    decoder = BatchDecoder(model, 1)
    row = decoder.add(params)
    output = RowOutput()
    while decoder.prefilling:
        decoder.prefill(8)
    while decoder.step().size and decoder.record(row, output) == RUNNING:
        pass
    return output


@pytest.mark.parametrize(
    ("pattern", "bias", "text"),
    [("abc", "", "abc"), ("(ab|cd)e", "a", "cde"), ("(ab|cd)e", "c", "abe"), ("a{3}", "", "aaa")],
)
def test_a_pattern_only_one_path_satisfies(model, vocab, pattern, bias, text):
    params = GenerationParams(
        prime=tuple(vocab.encode("hello ")),
        length=20,
        seed=3,
        regex=compile_regex(pattern, vocab, LIMITS),
        logit_bias=tuple((char, -100.0) for char in vocab.encode(bias)),
    )
    output = decode(model, params)
    assert vocab.decode(output.ids) == text and output.released == len(text)
    assert output.finish_reason == "regex" and output.regex_complete is True


def test_length_can_end_a_match_early(model, vocab):
    params = GenerationParams(
        prime=(1,), length=3, seed=0, regex=compile_regex("[ab]+c", vocab, LIMITS)
    )
    output = decode(model, params)
    assert set(vocab.decode(output.ids)) <= set("ab") and output.finish_reason == "length"
    assert output.regex_complete is False


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [
        ("é+", "regex_unmatchable"),
        ("[]", "regex_unmatchable"),
        ("(ab", "regex_invalid"),
        ("[a-", "regex_invalid"),
        (")", "regex_invalid"),
        ("a{2,1}", "regex_invalid"),
        ("(a)\\1", "regex_invalid"),
        ("", "string_length"),
        ("a" * 257, "string_length"),
    ],
)
def test_bad_patterns_are_param_errors(vocab, pattern, kind):
    with pytest.raises(ParamError) as raised:
        compile_regex(pattern, vocab, LIMITS)
    assert raised.value.field == "regex" and raised.value.kind == kind
    assert "\n" not in str(raised.value)


def test_a_pattern_too_complex_to_compile_in_time(vocab):
    limits = RegexLimits(compile_seconds=0.5)
    started = time.perf_counter()
    with pytest.raises(ParamError) as raised:
        compile_regex("(a|b)*a(a|b){20}", vocab, limits)  # 2^20 states
    assert time.perf_counter() - started < 4 * limits.compile_seconds  # slack for a busy machine
    assert raised.value.kind == "regex_too_complex" and "0.5 s" in str(raised.value)


def test_the_state_cap(vocab):
    assert compile_regex("[ab]{30}", vocab, RegexLimits(max_states=31)).states == 31
    with pytest.raises(ParamError) as raised:
        compile_regex("[ab]{30}", vocab, RegexLimits(max_states=30))
    assert raised.value.kind == "regex_too_complex" and "31 states" in str(raised.value)


@pytest.mark.parametrize(
    "limits",
    [{"max_pattern_chars": 0}, {"max_states": 0}, {"compile_seconds": 0}, {"compile_seconds": -1}],
)
def test_limits_are_positive(limits):
    with pytest.raises(ValueError, match="positive"):
        RegexLimits(**limits)
    with pytest.raises(ValueError):
        RegexLimits(compile_seconds=float("nan"))


def test_regex_cache_compiles_a_pattern_once_and_evicts_by_bytes(vocab):
    cache = RegexCache(vocab, LIMITS)
    assert cache.lookup("ab+") is None
    first = cache.get("ab+")
    assert cache.lookup("ab+") is first and cache.get("ab+") is first
    assert cache.get("ab*") is not first
    size = compile_regex("[ab]{3}", vocab, LIMITS).nbytes
    assert compile_regex("[cd]{3}", vocab, LIMITS).nbytes == size
    small = RegexCache(vocab, LIMITS, max_bytes=2 * size)
    one, two = small.get("[ab]{3}"), small.get("[cd]{3}")
    assert small.get("[ab]{3}") is one  # now the most recently used
    small.get("[ef]{3}")  # past the budget: the least recently used ([cd]) goes
    assert small.get("[ab]{3}") is one and small.lookup("[cd]{3}") is None
    assert small.get("[cd]{3}") is not two


def test_regex_cache_remembers_refusals(vocab, monkeypatch):
    cache = RegexCache(vocab, LIMITS)
    with pytest.raises(ParamError) as first:
        cache.get("(")
    compiles = []
    monkeypatch.setattr(regex, "compile_regex", lambda *args: compiles.append(args))
    with pytest.raises(ParamError) as again:
        cache.lookup("(")
    assert again.value is first.value and compiles == []  # refused without compiling
    for refused in range(cache.REFUSED_KEPT):
        cache.refuse(f"x{refused}", first.value)
    assert cache.lookup("(") is None  # the oldest refusal made room


def test_the_deadline_covers_the_table(vocab, monkeypatch):
    """A pattern that parses at once but whose table takes longer than the deadline is
    refused as too complex: the deadline counts the table's time too."""
    fsm = interegular.parse_pattern("[ab]{3000}").to_fsm()  # parsed before the clock starts

    class Parsed:
        def to_fsm(self):
            return fsm

    monkeypatch.setattr(regex.interegular, "parse_pattern", lambda pattern: Parsed())
    monkeypatch.setattr(regex, "CHECK_EVERY", 1)  # the table looks at the clock each step
    roomy = RegexLimits(max_states=10_000, compile_seconds=30)
    assert compile_regex("p", vocab, roomy).states == 3001
    with pytest.raises(ParamError) as raised:
        compile_regex("p", vocab, RegexLimits(max_states=10_000, compile_seconds=1e-4))
    assert raised.value.field == "regex" and raised.value.kind == "regex_too_complex"


def test_a_long_chain_compiles_within_its_deadline(vocab):
    """a{N}: N + 1 states; the table's cost grows with its transitions, not N² (the
    parse takes most of the time)."""
    automaton = compile_regex("a{2000}", vocab, RegexLimits(compile_seconds=5))
    assert automaton.states == 2001 and (automaton.next >= 0).sum() == 2000
    assert walk(automaton, vocab, "a" * 2000) > 0 and walk(automaton, vocab, "a" * 2001) == -1


@pytest.mark.parametrize("workers", [0, -1, 65])
def test_compile_workers_are_bounded(workers):
    with pytest.raises(ValueError, match="compile_workers"):
        RegexLimits(compile_workers=workers)


@pytest.mark.parametrize("pattern", ["", "a" * 257])
def test_check_length(pattern):
    with pytest.raises(ParamError) as raised:
        check_length(pattern, LIMITS)
    assert raised.value.field == "regex" and raised.value.kind == "string_length"
    check_length("a" * 256, LIMITS)
