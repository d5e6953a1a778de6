"""Where a regex ends (model/decoding/sampler.py, "Where a regex ends"), on a small model
trained here: a corpus of sentences of words ending in -ing and -ed, so that after a
whole word the model puts its mass on a space or a full stop."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.decoding.automaton import AutomatonPool
from model.decoding.decoder import BatchDecoder
from model.decoding.params import GenerationParams
from model.decoding.regex import RegexLimits, compile_regex
from model.decoding.sampler import FINISHED_REGEX_STOP, RUNNING, sample_rows
from model.decoding.sampler_rows import SamplerRows
from model.network import CharRNN
from model.vocab import Vocabulary

STEMS = ("walk", "talk", "jump", "play", "call", "look", "help", "cook", "paint", "rest", "wait")
PRIME = "Jumped.\nWalking "  # a sentence, then a new one's first word
SEEDS = 40


def corpus(sentences: int = 1500) -> str:
    """Sentences of 1-3 words, each a stem with -ing or -ed: "Cooking walked.\\n"."""
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(sentences):
        words = [
            STEMS[rng.integers(len(STEMS))] + ("ing" if rng.random() < 0.5 else "ed")
            for _ in range(rng.integers(1, 4))
        ]
        lines.append(" ".join([words[0].capitalize(), *words[1:]]) + ".\n")
    return "".join(lines)


@pytest.fixture(scope="module")
def trained() -> tuple[CharRNN, Vocabulary]:
    """A 1 × 64 LSTM after 150 Adam steps of 32 × 64 characters (a few seconds)."""
    text = corpus()
    vocab = Vocabulary.from_text(text)
    ids = torch.tensor(vocab.encode(text))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=64, num_layers=1, dropout=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch, seq_len = 32, 64
    for _ in range(150):
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,))
        inputs = torch.stack([ids[s : s + seq_len] for s in starts])  # (B, T)
        targets = torch.stack([ids[s + 1 : s + seq_len + 1] for s in starts])
        logits, _ = model(inputs)  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    assert loss.item() < 0.8  # it has learnt the words (from 3.5)
    return model.eval(), vocab


def regex_requests(vocab, pattern, seeds, prime=PRIME, length=120, **settings):
    """A request per seed, the pattern compiled once (as the service's cache does)."""
    automaton = compile_regex(pattern, vocab, RegexLimits())
    return [
        GenerationParams(
            prime=tuple(vocab.encode(prime)),
            length=length,
            seed=seed,
            regex=automaton,
            **settings,
        )
        for seed in seeds
    ]


@pytest.mark.parametrize("pattern", ["[a-z]+(ing|ed)", "[A-Z][a-z]+( [a-z]+)*"])
def test_a_pattern_that_may_go_on_ends_where_the_text_would(trained, serve, alone, pattern):
    model, vocab = trained
    prime = PRIME if pattern.startswith("[a-z]") else "Jumped.\n"
    requests = list(enumerate(regex_requests(vocab, pattern, range(SEEDS), prime)))
    served = serve(BatchDecoder(model, SEEDS), requests)
    ended = 0
    for seed, _ in requests:
        output = served.outputs[seed]
        text = vocab.decode(output.ids)
        assert output.finish_reason in ("regex", "length")
        if output.finish_reason == "regex":
            assert output.regex_complete and re.fullmatch(pattern, text), text
            assert output.released == len(output.ids)  # the whole match is shown
            ended += 1
    assert ended >= 0.8 * SEEDS  # most: where the model writes a space or a full stop
    for seed, params in requests[:3]:  # a seed gives the same text alone and in a batch
        assert alone(model, params).ids == served.outputs[seed].ids


def network_probabilities(model, vocab, text, temperature) -> np.ndarray:
    """The model's distribution after `text`, at a temperature: softmax(logits / T), (V,)."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([vocab.encode(text)]))  # (1, T, V)
    return torch.softmax(logits[0, -1].double() / temperature, dim=-1).numpy()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_the_chance_of_ending_is_the_mass_of_the_characters_that_leave(trained, temperature):
    """At an accepting state, the kernel's draw over evenly spaced random numbers: the
    share that ends equals the mass the network gives, at the request's temperature, to
    the characters that would leave the pattern, and each allowed character's share its
    own mass."""
    model, vocab = trained
    pattern, generated = "[A-Z][a-z]+( [a-z]+)*", "Walking walked"
    (params,) = regex_requests(vocab, pattern, [0], "Jumped.\n", temperature=temperature)
    rows = 4000
    pool = AutomatonPool(len(vocab))
    sampler = SamplerRows(rows, len(vocab))
    start = pool.acquire(params.regex)
    for row in range(rows):
        sampler.assign(row, params, np.asarray(params.prime), start)
    every = np.arange(rows)
    for char in vocab.encode(generated):  # each row writes "Walking walked", forced
        forcing = np.full((rows, len(vocab)), -30, np.float32)
        forcing[:, char] = 30
        sample_rows(every, forcing, sampler.settings, sampler.state, pool.tables, sampler.out)
        sampler.refill(every)
    state = int(sampler.state.regex_state[0])
    assert pool.final[state] and pool.open[state]
    allowed = pool.next[state] >= 0  # [a-z] and the space
    with torch.no_grad():
        logits, _ = model(torch.tensor([vocab.encode("Jumped.\n" + generated)]))
    logits = np.tile(logits[0, -1].numpy(), (rows, 1))  # the network's own, (rows, V)
    sampler.state.uniforms[every, sampler.state.positions] = (every + 0.5) / rows
    sample_rows(every, logits, sampler.settings, sampler.state, pool.tables, sampler.out)

    probs = network_probabilities(model, vocab, "Jumped.\n" + generated, temperature)
    ended = sampler.out.status == FINISHED_REGEX_STOP
    assert ((sampler.out.status == RUNNING) | ended).all()
    stop = probs[~allowed].sum()
    assert 0.05 < stop < 0.95  # both ways have a real chance here
    assert abs(ended.mean() - stop) <= 1.5 / rows + 1e-6
    for char in np.flatnonzero(allowed):
        share = ((sampler.out.ids == char) & ~ended).mean()
        assert abs(share - probs[char]) <= 1.5 / rows + 1e-6, vocab.chars[char]


def test_over_seeds_a_match_ends_as_often_as_the_mass_says(trained, serve):
    """Seeds through the whole decoder: "walked" is forced by the pattern, then the text
    ends there (nothing more written) as often as the network gives its mass to leaving
    characters: anything but the space."""
    model, vocab = trained
    pattern, count = "walked( [a-z]+)*", 400
    # 7 characters: "walked" and one more, enough to tell an end from a space
    requests = list(enumerate(regex_requests(vocab, pattern, range(count), length=7)))
    served = serve(BatchDecoder(model, count), requests, prefill_rows=count)
    ended_at_once = sum(
        vocab.decode(served.outputs[seed].ids) == "walked"
        and served.outputs[seed].finish_reason == "regex"
        for seed in range(count)
    )
    probs = network_probabilities(model, vocab, PRIME + "walked", 1.0)
    stop = 1.0 - probs[vocab.encode(" ")[0]]
    assert 0.1 < stop < 0.9
    spread = 4 * np.sqrt(stop * (1 - stop) / count)  # four standard deviations
    assert abs(ended_at_once / count - stop) < spread
