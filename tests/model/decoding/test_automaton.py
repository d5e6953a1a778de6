"""The pool of a decoder's automata: offsets, reference counts, and compaction while rows
are mid-decode."""

import numpy as np

from model.decoding.automaton import AutomatonPool
from model.decoding.decoder import BatchDecoder
from model.decoding.output import RowOutput
from model.decoding.params import GenerationParams
from model.decoding.regex import RegexLimits, compile_regex
from model.decoding.sampler import RUNNING

LIMITS = RegexLimits()


def test_automaton_pool_offsets_and_compaction(vocab):
    one = compile_regex("ab", vocab, LIMITS)  # 3 states
    two = compile_regex("[a-d]{5}e", vocab, LIMITS)  # 7 states
    pool = AutomatonPool(len(vocab))
    assert len(pool.final) == 1 and (pool.next == -1).all()  # state 0: no automaton
    start_two = pool.acquire(two)
    start_one = pool.acquire(one)
    assert (start_two, start_one) == (1, 1 + two.states) and pool.acquire(one) == start_one
    rows = slice(start_one, start_one + one.states)
    assert np.array_equal(pool.next[rows], np.where(one.next >= 0, one.next + start_one, -1))
    assert np.array_equal(pool.final[rows], one.final)
    states = np.array([-1, start_one + 1, start_two + 3, start_one])
    pool.release(two)
    pool.compact(states)  # two's 7 states are over half of the pool: rebuilt without it
    assert len(pool.final) == 1 + one.states
    assert states.tolist() == [-1, 2, start_two + 3, 1]  # rows of `two` had left already
    pool.release(one)
    pool.compact(states)
    assert len(pool.final) == 1 + one.states  # one row still holds `one`
    pool.release(one)
    pool.compact(np.array([-1]))
    assert len(pool.final) == 1


def test_compaction_keeps_rows_on_their_states(model, vocab, alone):
    """Two regex requests; the first ends, the pool is compacted, and the second moves to
    new state numbers mid-decode: its output is the same as alone."""
    short = GenerationParams(
        prime=(2,), length=3, seed=1, regex=compile_regex("[a-u]{2,9}q", vocab, LIMITS)
    )
    long = GenerationParams(  # "q" banned: it never completes a match, so runs to its length
        prime=(3, 4),
        length=40,
        seed=2,
        regex=compile_regex("([a-h]+ )+q", vocab, LIMITS),
        logit_bias=((vocab.encode("q")[0], -100.0),),
    )
    decoder = BatchDecoder(model, 2)
    rows = [decoder.add(short), decoder.add(long)]
    outputs = [RowOutput(), RowOutput()]
    while decoder.prefilling:
        decoder.prefill(8)
    moved = False
    while len(decoder.decoding):
        decoder.step()
        for row in decoder.decoding.tolist():
            if decoder.record(row, outputs[row]) != RUNNING:
                decoder.remove(row)
        before = int(decoder.sampler.state.regex_state[rows[1]])
        size = len(decoder.automata.final)
        decoder.compact()
        if len(decoder.automata.final) < size and decoder.params[rows[1]] is not None:
            moved = int(decoder.sampler.state.regex_state[rows[1]]) != before
    assert moved
    assert outputs[1].ids == alone(model, long).ids and outputs[1].regex_complete is not None
