"""The sampler chain, compiled (numba): each row's next character from its logits, with its
own settings, its own history and its own random numbers; no Python per character.

    logits ─▶ logit_bias ─▶ repetition penalty ─▶ frequency/presence ─▶ regex mask
           ─▶ temperature ─▶ top_k ─▶ top_p ─▶ min_p ─▶ draw ─▶ accept (history, stops,
              automaton, length)

Each link is a pure function of the row's logits and state and is skipped at its neutral
setting. `accept` is the only place a row's state changes (llama.cpp's apply/accept
split). Log-probabilities come from the network's own distribution, before the first link.

Where a regex ends. A character model has no end-of-text token, so at an accepting state
of the automaton (a match could end here) the regex mask is left out and the row draws
from the rest of the chain as if it had no pattern. A character the pattern allows is
written as usual; one that would leave the pattern ends the text instead, before it
(FINISHED_REGEX_STOP, nothing written). So the draw picks "stop" with the mass the chain
gives, unconstrained, to the characters that would leave the pattern (a space or a full
stop after a word), and each allowed character with its own mass, from the same one
random number a draw always takes. Where nothing can follow the match, the character
that completes it ends the text (FINISHED_REGEX), as it must.

A row's arrays, by name (first axis: rows; model/decoding/sampler_rows.py gives their
shapes): `settings` (Settings: what the request asked for), `state` (State: its history,
random numbers and regex state), `automata` (AutomatonTables: next, final, open) and `out`
(Out: the drawn id, status, hold-back and logprob record). The entry points take them as
these NamedTuples or as plain tuples in the same order (`named`).

Status of a row after a draw: RUNNING, or why it ended (see the constants below).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from model.decoding.automaton import AutomatonTables
from model.decoding.output import CHOSEN, ID, TOP_IDS, TOP_LOGPROBS
from model.decoding.params import MAX_LOGIT_BIAS
from model.decoding.sampler_rows import Out, Settings, State
from model.fast_math import JIT

RUNNING = 0
FINISHED_LENGTH = 1  # `length` characters written
FINISHED_STOP = 2  # a stop string written (and cut off)
FINISHED_REGEX = 3  # the automaton accepts and cannot go on
FAILED_NON_FINITE = 4  # the network gave NaN or infinite logits
FAILED_NO_CANDIDATE = 5  # every character banned (logit_bias and the regex mask together)
FINISHED_REGEX_STOP = 6  # at an accepting state the draw chose to end: no character
FINISH_REASONS = {
    FINISHED_LENGTH: "length",
    FINISHED_STOP: "stop",
    FINISHED_REGEX: "regex",
    FINISHED_REGEX_STOP: "regex",
}
FAILURES = {
    FAILED_NON_FINITE: "the model produced non-finite scores for this request",
    FAILED_NO_CANDIDATE: "no character is allowed (logit_bias and regex ban them all)",
}
NO_CHARACTER = frozenset((FINISHED_REGEX_STOP, *FAILURES))  # draws that wrote nothing
BANNED = -math.inf
BAN = -MAX_LOGIT_BIAS  # a logit_bias this low bans the character outright


@njit(**JIT)
def filtered_probs(scores, temperature, top_k, top_p, min_p):
    """One row's distribution after the truncation links: scores (V,) float64 (logits
    after bias, penalties and mask; -inf for banned characters) → (probabilities sorted
    from the likeliest (V,), the order that sorts them (V,), how many are kept). Kept
    characters are renormalised, the rest are 0; the likeliest always stays. Ties keep
    vocabulary order. temperature 0 keeps the likeliest alone (greedy)."""
    vocab = scores.shape[0]
    order = np.argsort(-scores, kind="mergesort")
    probs = np.zeros(vocab)
    peak = scores[order[0]]
    if peak == BANNED:
        return probs, order, 0
    kept = vocab if top_k <= 0 or top_k >= vocab else top_k
    if temperature == 0.0:
        kept = 1
    total = 0.0
    for i in range(kept):
        value = scores[order[i]]
        if value == BANNED:
            kept = i
            break
        probs[i] = 1.0 if temperature == 0.0 else math.exp((value - peak) / temperature)
        total += probs[i]
    before = 0.0
    floor = min_p * probs[0] / total
    for i in range(kept):
        probs[i] /= total
        # Nucleus: drop a character once the likelier ones reach top_p; min_p: once it
        # falls below min_p × the likeliest (sorted, so every later one does too).
        if i > 0 and (before >= top_p or probs[i] < floor):
            kept = i
            break
        before += probs[i]
    probs[kept:] = 0.0
    probs[:kept] /= probs[:kept].sum()
    return probs, order, kept


@njit(inline="always", **JIT)
def named(settings, state, automata, out):
    """The chain's arrays by name, from the NamedTuples or from plain tuples of the same
    arrays in the same order (SamplerRows.arrays, quicker to pass: see there). Free once
    compiled: both are the same struct of arrays."""
    return Settings(*settings), State(*state), AutomatonTables(*automata), Out(*out)


@njit(inline="always", **JIT)
def _scores(r, logits, settings, state, automata):
    """The links before truncation: logits[r] → float64 scores."""
    bias, penalty = settings.bias, settings.repetition_penalty
    frequency, presence = settings.frequency_penalty, settings.presence_penalty
    window_counts, counts = state.window_counts, state.counts
    scores = logits[r].astype(np.float64)
    vocab = scores.shape[0]
    if settings.has_bias[r]:
        for j in range(vocab):
            scores[j] = BANNED if bias[r, j] <= BAN else scores[j] + bias[r, j]
    if penalty[r] != 1.0:
        for j in range(vocab):
            if window_counts[r, j] > 0:
                value = scores[j]
                scores[j] = value / penalty[r] if value > 0 else value * penalty[r]
    if frequency[r] != 0.0 or presence[r] != 0.0:
        for j in range(vocab):
            if counts[r, j] > 0:
                scores[j] -= frequency[r] * counts[r, j] + presence[r]
    current = state.regex_state[r]
    if current >= 0 and not automata.final[current]:  # accepting: see "Where a regex ends"
        for j in range(vocab):
            if automata.next[current, j] < 0:
                scores[j] = BANNED
    return scores


@njit(inline="always", **JIT)
def _logprobs(r, logits, chosen, count, out):
    """Row r's logprob record (out.logprob_records[r], laid out as model/decoding/output.py's
    ROW_WIDTH): the chosen character, its log-probability, and the `count` likeliest
    characters with theirs, under the network's own distribution (log-softmax of the raw logits). No
    allocation: it runs for every row of every step that asks."""
    record = out.logprob_records
    vocab = logits.shape[1]
    peak = -math.inf
    for j in range(vocab):
        peak = max(peak, np.float64(logits[r, j]))
    total = 0.0
    for j in range(vocab):
        total += math.exp(np.float64(logits[r, j]) - peak)
    log_total = peak + math.log(total)
    record[r, ID] = chosen
    record[r, CHOSEN] = np.float64(logits[r, chosen]) - log_total
    # The `count` likeliest in one pass, by insertion into the record's top slots: most
    # likely first, ties to the lowest id (as a stable sort by descending logit orders
    # them), since a later id only moves above strictly smaller logits.
    filled = 0
    for j in range(vocab):
        value = logits[r, j]
        if filled < count:
            slot = filled
            filled += 1
        elif count > 0 and value > logits[r, int(record[r, TOP_IDS + count - 1])]:
            slot = count - 1
        else:
            continue
        while slot > 0 and logits[r, int(record[r, TOP_IDS + slot - 1])] < value:
            record[r, TOP_IDS + slot] = record[r, TOP_IDS + slot - 1]
            slot -= 1
        record[r, TOP_IDS + slot] = j
    for n in range(count):
        best = int(record[r, TOP_IDS + n])
        record[r, TOP_LOGPROBS + n] = np.float64(logits[r, best]) - log_total


@njit(inline="always", **JIT)
def _accept(r, chosen, settings, state, automata, out):
    """Record the drawn character in the row's state; set its status and how many of its
    last characters to hold back (they may begin a stop string)."""
    penalty, repeat_last_n = settings.repetition_penalty, settings.repeat_last_n
    frequency, presence = settings.frequency_penalty, settings.presence_penalty
    stops, stop_lengths, stop_fail = settings.stops, settings.stop_lengths, settings.stop_fail
    generated, ring, pushed, kmp = state.generated, state.ring, state.pushed, state.kmp
    window_counts, counts = state.window_counts, state.counts
    status, held = out.status, out.held
    generated[r] += 1
    if penalty[r] != 1.0:  # the window of the last repeat_last_n characters
        size = repeat_last_n[r]
        width = ring.shape[1]
        if size > 0:
            if pushed[r] >= size:
                window_counts[r, ring[r, (pushed[r] - size) % width]] -= 1
            window_counts[r, chosen] += 1
        ring[r, pushed[r] % width] = chosen
        pushed[r] += 1
    if frequency[r] != 0.0 or presence[r] != 0.0:
        counts[r, chosen] += 1
    status[r] = RUNNING
    longest = 0
    for s in range(stops.shape[1]):  # Knuth-Morris-Pratt over each stop string
        size = stop_lengths[r, s]
        if size == 0:
            continue
        matched = kmp[r, s]
        while matched > 0 and stops[r, s, matched] != chosen:
            matched = stop_fail[r, s, matched - 1]
        if stops[r, s, matched] == chosen:
            matched += 1
        if matched == size:
            status[r] = FINISHED_STOP
            held[r] = size
            return
        kmp[r, s] = matched
        longest = max(longest, matched)
    held[r] = longest
    current = state.regex_state[r]
    if current >= 0:
        current = automata.next[current, chosen]
        state.regex_state[r] = current
        if automata.final[current] and not automata.open[current]:
            status[r] = FINISHED_REGEX
            return
    if generated[r] >= settings.length[r]:
        status[r] = FINISHED_LENGTH


@njit(**JIT)
def sample_row(r, logits, settings, state, automata, out):
    """Draw row r's next character into out, run `accept`; → the status (no character is
    drawn for a status in NO_CHARACTER). The arrays come named (sample_rows names them
    once a call: a rebuilt tuple takes a reference to each array)."""
    uniforms, positions = state.uniforms, state.positions
    ids, status = out.ids, out.status
    for j in range(logits.shape[1]):
        if not math.isfinite(logits[r, j]):
            status[r] = FAILED_NON_FINITE
            return status[r]
    scores = _scores(r, logits, settings, state, automata)
    probs, order, kept = filtered_probs(
        scores, settings.temperature[r], settings.top_k[r], settings.top_p[r], settings.min_p[r]
    )
    if kept == 0:
        status[r] = FAILED_NO_CANDIDATE
        return status[r]
    target = uniforms[r, positions[r]]
    positions[r] += 1
    cumulative = 0.0
    picked = 0
    for i in range(kept):
        cumulative += probs[i]
        picked = i
        if cumulative > target:
            break
    chosen = order[picked]
    current = state.regex_state[r]
    if current >= 0 and automata.final[current] and automata.next[current, chosen] < 0:
        status[r] = FINISHED_REGEX_STOP  # the chain would leave the pattern: it ends here
        return status[r]
    ids[r] = chosen
    asked = settings.logprobs[r]
    if asked >= 0:
        _logprobs(r, logits, chosen, asked, out)
    _accept(r, chosen, settings, state, automata, out)
    return status[r]


@njit(**JIT)
def sample_rows(rows, logits, settings, state, automata, out):
    """sample_row for each of rows (m,) int64; → the rows still running (int64)."""
    settings, state, automata, out = named(settings, state, automata, out)
    running = np.empty(rows.shape[0], dtype=np.int64)
    count = 0
    for p in range(rows.shape[0]):
        r = rows[p]
        if sample_row(r, logits, settings, state, automata, out) == RUNNING:
            running[count] = r
            count += 1
    return running[:count]


@njit(**JIT)
def prompt_logprob(r, logits, next_id, count, out):
    """While a prime runs: the logprob record of its next character `next_id` and the
    `count` likeliest alternatives, into out (as for a generated character)."""
    _logprobs(r, logits, next_id, count, Out(*out))
