import numpy as np
import pytest
import torch

from model.decoding.generate import DecodingFailed, SingleStream
from model.decoding.params import GenerationParams
from model.decoding.regex import RegexLimits, compile_regex

BACKENDS = ["kernel", "torch"]


def forced(vocab, prime, text, stops, length=50):
    """A request whose output can only be `text` (a regex with that one path), with stops."""
    return GenerationParams(
        prime=tuple(vocab.encode(prime)),
        length=length,
        seed=0,
        regex=compile_regex(text, vocab, RegexLimits()),
        stop=tuple(tuple(vocab.encode(stop)) for stop in stops),
    )


def chunks(model, params, backend="auto", block_steps=1):
    """What a stream yields, drawing `block_steps` characters a step (1: each character's
    effect on what is released shows), and its output."""
    stream = SingleStream(model, params, backend=backend, block_steps=block_steps)
    return [list(chunk) for chunk in stream], stream.output


def test_a_stream_yields_what_it_releases(model, vocab):
    params = GenerationParams(prime=(1, 2, 3), length=40, seed=5, stop=(tuple(vocab.encode("a")),))
    parts, output = chunks(model, params)
    assert all(parts) and [char for part in parts for char in part] == output.ids[: output.released]
    assert output.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("prime", "text", "stops", "parts", "released", "reason"),
    [
        # A stop split over steps, KMP: the third "a" keeps "aa" matched; "a" is shown.
        ("q", "aaab", ["aab"], ["a"], 1, "stop"),
        # Held back while it may begin "abd", released when it cannot.
        ("q", "abac", ["abd"], ["ab", "ac"], 4, "regex"),
        # In the prime, the stop does not count.
        ("cab", "cd", ["ab"], ["c", "d"], 2, "regex"),
        # Straddling prime and output ("a" + "b") does not stop; a whole "ab" later does.
        ("ca", "bab", ["ab"], ["b"], 1, "stop"),
        # Two stops sharing a prefix.
        ("q", "abcabd", ["abce", "abd"], ["abc"], 3, "stop"),
    ],
)
def test_stop_strings(model, vocab, prime, text, stops, parts, released, reason):
    got, output = chunks(model, forced(vocab, prime, text, stops))
    assert [vocab.decode(part) for part in got] == parts
    assert vocab.decode(output.ids) == text
    assert output.released == released and output.finish_reason == reason


@pytest.mark.parametrize("block_steps", [2, 3, 8])
def test_several_characters_a_step_release_the_same_text(model, vocab, block_steps):
    """Held characters are released (or cut as a stop) the same way whatever the step."""
    for prime, text, stops in (("q", "abac", ["abd"]), ("q", "abcabd", ["abce", "abd"])):
        one, by_one = chunks(model, forced(vocab, prime, text, stops))
        many, by_many = chunks(model, forced(vocab, prime, text, stops), block_steps=block_steps)
        assert [c for part in many for c in part] == [c for part in one for c in part]
        assert len(many) <= len(one)
        assert by_many.ids == by_one.ids and by_many.released == by_one.released
        assert by_many.finish_reason == by_one.finish_reason


def test_the_length_releases_held_characters(model, vocab):
    got, output = chunks(model, forced(vocab, "q", "abab[a-u]", ["abc"], length=4))
    assert [vocab.decode(part) for part in got] == ["ab", "ab"]  # "ab" held, then released
    assert output.finish_reason == "length" and output.released == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_length_zero_ends_after_the_prime(model, backend):
    params = GenerationParams(prime=(1, 2, 3), length=0, seed=1, logprobs=1, prompt_logprobs=True)
    got, output = chunks(model, params, backend)
    assert got == [] and output.ids == [] and output.finish_reason == "length"
    assert len(output.prompt_logprobs) == 2


def log_softmax(model, ids):
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    return torch.log_softmax(logits[0].double(), dim=-1).numpy()  # (T, V)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_logprobs_are_the_networks(model, backend):
    prime = (3, 1, 4, 1, 5, 9, 2, 6, 5, 3)
    params = GenerationParams(prime=prime, length=2, seed=0, logprobs=3, prompt_logprobs=True)
    _, output = chunks(model, params, backend)
    expected = log_softmax(model, prime)
    assert len(output.prompt_logprobs) == len(prime) - 1
    for position, entry in enumerate(output.prompt_logprobs.read(3).entries()):
        row = expected[position]  # the logits after prime[: position + 1]
        assert entry.id == prime[position + 1]
        assert entry.logprob == pytest.approx(row[entry.id], abs=1e-5)
        top = np.argsort(-row, kind="stable")[:3]
        assert [char for char, _ in entry.top] == top.tolist()
        np.testing.assert_allclose([lp for _, lp in entry.top], row[top], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprobs_are_the_raw_networks_whatever_the_sampler_does(model, backend):
    """Temperature, penalties and bias change the draw, not the reported log-probabilities."""
    prime = (5, 6, 7)
    params = GenerationParams(
        prime=prime,
        length=30,
        seed=4,
        temperature=0.6,
        repetition_penalty=2.0,
        frequency_penalty=1.0,
        logit_bias=((2, 5.0), (3, -100.0)),
        logprobs=5,
    )
    _, output = chunks(model, params, backend)
    assert len(output.logprobs) == 30 and 3 not in output.ids
    expected = log_softmax(model, [*prime, *output.ids])
    for i, entry in enumerate(output.logprobs.read(5).entries()):
        row = expected[len(prime) - 1 + i]
        assert entry.id == output.ids[i]
        assert entry.logprob == pytest.approx(row[entry.id], abs=1e-5)
        assert [char for char, _ in entry.top] == np.argsort(-row, kind="stable")[:5].tolist()
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)


def test_zero_alternatives_still_give_the_chosen_logprob(model):
    _, output = chunks(model, GenerationParams(prime=(1,), length=5, seed=0, logprobs=0))
    assert len(output.logprobs) == 5 and output.logprobs.read(0).top_ids.tolist() == [[]] * 5
    _, output = chunks(model, GenerationParams(prime=(1,), length=5, seed=0))
    assert len(output.logprobs) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_network_giving_nan_fails_the_stream(make_model, backend):
    model = make_model()
    with torch.no_grad():
        model.head.bias[4] = float("nan")
    stream = SingleStream(model, GenerationParams(prime=(1,), length=5, seed=0), backend)
    with pytest.raises(DecodingFailed, match="non-finite"):
        list(stream)


def test_the_same_seed_repeats_and_temperature_zero_ignores_it(model):
    def text(**settings):
        return chunks(model, GenerationParams(prime=(1, 2), length=40, **settings))[1].ids

    assert text(seed=1) == text(seed=1) != text(seed=2)
    assert text(seed=1, temperature=0.0) == text(seed=2, temperature=0.0)
    assert text(seed=1, top_k=1) == text(seed=2, temperature=0.0)
