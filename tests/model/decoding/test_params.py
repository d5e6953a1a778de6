import math

import pytest

from model.decoding.params import (
    DEFAULT_LENGTH,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_SEED,
    MAX_STOP_CHARS,
    MAX_STOPS,
    MAX_TOP_K,
    GenerationParams,
    ParamError,
    build_params,
    check_stops,
    encode_logit_bias,
    encode_prime,
    encode_stops,
    resolve_seed,
)
from model.decoding.regex import RegexLimits, compile_regex
from model.text import NEWLINES_KEEP
from model.vocab import Vocabulary

NAN, INF = math.nan, math.inf


def params(**changes) -> GenerationParams:
    return GenerationParams(**{"prime": (1, 2), "length": 10, "seed": 0, **changes})


def test_defaults_turn_every_link_off():
    request = params()
    assert (request.temperature, request.top_k, request.top_p, request.min_p) == (1, 0, 1, 0)
    assert request.repetition_penalty == 1 and request.frequency_penalty == 0
    assert request.presence_penalty == 0 and request.logit_bias == () and request.stop == ()
    assert request.logprobs is None and not request.prompt_logprobs and request.regex is None


@pytest.mark.parametrize(
    "changes",
    [
        {"length": 0},
        {"seed": MAX_SEED},
        {"temperature": 0.0},
        {"temperature": 100.0},
        {"top_k": MAX_TOP_K},
        {"top_p": 1e-9},
        {"min_p": 1.0},
        {"repetition_penalty": 10.0},
        {"repetition_penalty": 0.01},
        {"repeat_last_n": 0},
        {"repeat_last_n": 2048},
        {"frequency_penalty": -2.0, "presence_penalty": 2.0},
        {"logit_bias": tuple((char, -100.0) for char in range(MAX_LOGIT_BIAS_ENTRIES))},
        {"logit_bias": ((3, 100.0),)},
        {"stop": tuple((1,) * MAX_STOP_CHARS for _ in range(MAX_STOPS))},
        {"logprobs": 0},
        {"logprobs": 5, "prompt_logprobs": True},
    ],
)
def test_bounds_are_accepted(changes):
    assert params(**changes)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prime", ()),
        ("length", -1),
        ("length", NAN),
        ("seed", -1),
        ("seed", MAX_SEED + 1),
        ("seed", NAN),
        ("temperature", -0.1),
        ("temperature", 100.5),
        ("temperature", NAN),
        ("temperature", INF),
        ("top_k", -1),
        ("top_k", MAX_TOP_K + 1),
        ("top_p", 0.0),
        ("top_p", -0.5),
        ("top_p", 1.01),
        ("top_p", NAN),
        ("min_p", -0.01),
        ("min_p", 1.5),
        ("min_p", NAN),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", 10.5),
        ("repetition_penalty", NAN),
        ("repetition_penalty", INF),
        ("repeat_last_n", -1),
        ("repeat_last_n", 2049),
        ("repeat_last_n", 10**18),
        ("frequency_penalty", 2.5),
        ("frequency_penalty", -2.5),
        ("frequency_penalty", NAN),
        ("frequency_penalty", -INF),
        ("presence_penalty", 2.01),
        ("presence_penalty", NAN),
        ("presence_penalty", INF),
        ("logit_bias", ((0, 100.5),)),
        ("logit_bias", ((0, -INF),)),
        ("logit_bias", ((0, NAN),)),
        ("logit_bias", tuple((char, 1.0) for char in range(MAX_LOGIT_BIAS_ENTRIES + 1))),
        ("stop", tuple((1,) for _ in range(MAX_STOPS + 1))),
        ("stop", ((),)),
        ("stop", ((1,) * (MAX_STOP_CHARS + 1),)),
        ("logprobs", -1),
        ("logprobs", 6),
        ("logprobs", 10**9),
    ],
)
def test_hostile_values_name_their_field(field, value):
    with pytest.raises(ParamError) as raised:
        params(**{field: value})
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    assert raised.value.kind in ("value_error", "int_type", "too_long", "string_length")


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_k", 1.5), ("length", "10"), ("seed", True), ("repeat_last_n", 2.0), ("logprobs", 1.0)],
)
def test_integers_must_be_integers(field, value):
    with pytest.raises(ParamError) as raised:
        params(**{field: value})
    assert (raised.value.field, raised.value.kind) == (field, "int_type")


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", "hot"), ("top_p", None), ("min_p", True), ("frequency_penalty", [1.0])],
)
def test_numbers_must_be_numbers(field, value):
    with pytest.raises(ParamError) as raised:
        params(**{field: value})
    assert (raised.value.field, raised.value.kind) == (field, "float_type")
    assert params(**{field: 1}).__getattribute__(field) == 1  # an int is a number


def test_prompt_logprobs_need_logprobs():
    with pytest.raises(ParamError) as raised:
        params(prompt_logprobs=True)
    assert (raised.value.field, raised.value.kind) == ("prompt_logprobs", "missing_logprobs")


def test_params_are_frozen():
    request = params()
    with pytest.raises(AttributeError):
        request.length = 5


def test_resolve_seed():
    assert resolve_seed(5) == 5
    assert resolve_seed(0) == 0
    seeds = {resolve_seed(None) for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= seed <= MAX_SEED for seed in seeds)


@pytest.fixture
def small() -> Vocabulary:
    return Vocabulary.from_text("abc \n")


def test_encode_prime(small):
    assert encode_prime(small, "abc") == tuple(small.encode("abc"))
    assert encode_prime(small, "") == tuple(small.encode("\n"))
    assert encode_prime(Vocabulary.from_text("xy"), "") == (0,)  # no newline: the first char


def test_encode_prime_lists_unknown_characters(small):
    with pytest.raises(ParamError) as raised:
        encode_prime(small, "abXYZX")
    error = raised.value
    assert error.field == "prime" and error.kind == "prime_out_of_vocabulary"
    assert error.ctx["missing"] == ["X", "Y", "Z"]
    assert "'X'" in str(error) and "skip_unknown" in str(error)
    assert encode_prime(small, "aXb", skip_unknown=True) == tuple(small.encode("ab"))
    assert encode_prime(small, "XYZ", skip_unknown=True) == tuple(small.encode("\n"))


def test_encode_prime_with_an_unknown_symbol():
    vocab = Vocabulary(("?", "a", "b"), unknown="?")
    assert encode_prime(vocab, "aé") == (1, 0)


def test_encode_prime_newlines(small):
    assert encode_prime(small, "a\r\nb\rc") == tuple(small.encode("a\nb\nc"))
    with pytest.raises(ParamError) as raised:
        encode_prime(small, "a\r\nb", newlines=NEWLINES_KEEP)
    assert raised.value.ctx["missing"] == ["\r"]
    crlf = Vocabulary.from_text("ab\r\n")
    assert encode_prime(crlf, "a\r\nb", newlines=NEWLINES_KEEP) == tuple(crlf.encode("a\r\nb"))
    assert encode_prime(crlf, "a\r\nb") == tuple(crlf.encode("a\nb"))


def test_encode_stops(small):
    assert encode_stops(small, ["ab", "c"]) == (tuple(small.encode("ab")), tuple(small.encode("c")))
    assert encode_stops(small, ["aé", "b"]) == (tuple(small.encode("b")),)  # é: never written
    assert encode_stops(small, []) == ()
    a = small.encode("a")[0]
    assert encode_stops(small, ["a" * MAX_STOP_CHARS]) == ((a,) * MAX_STOP_CHARS,)


@pytest.mark.parametrize(
    "stops",
    [
        ["a"] * (MAX_STOPS + 1),
        [""],
        ["a" * (MAX_STOP_CHARS + 1)],
        ["a", ""],
        ["é"] * (MAX_STOPS + 1),  # too many, though none could ever be written
        "ab",  # a string, not a list of them
        [1],
        None,
    ],
)
def test_encode_stops_hostile(small, stops):
    with pytest.raises(ParamError) as raised:
        encode_stops(small, stops)
    assert raised.value.field == "stop"


@pytest.mark.parametrize("unit", ["a", (1,)])
def test_check_stops_takes_text_and_ids_alike(unit):
    check_stops([unit * MAX_STOP_CHARS] * MAX_STOPS)
    with pytest.raises(ParamError, match="at most"):
        check_stops([unit] * (MAX_STOPS + 1))
    for stop in (unit * (MAX_STOP_CHARS + 1), unit[:0]):
        with pytest.raises(ParamError, match="1 to"):
            check_stops([stop])


def test_encode_logit_bias_by_character_and_by_id(small):
    a, b = small.encode("ab")
    assert encode_logit_bias(small, {"b": -100, "a": 2.5}) == ((a, 2.5), (b, -100.0))
    by_id = encode_logit_bias(small, {str(b): -1, str(a): 3}, keys="ids")
    assert by_id == ((a, 3.0), (b, -1.0))
    assert encode_logit_bias(small, {}) == ()


@pytest.mark.parametrize(
    ("keys", "key", "kind"),
    [
        ("chars", "X", "unknown_character"),
        ("chars", "ab", "unknown_character"),
        ("chars", "", "unknown_character"),
        ("ids", "5", "unknown_token"),
        ("ids", "-1", "unknown_token"),
        ("ids", "a", "unknown_token"),
        ("ids", "1.0", "unknown_token"),
        ("ids", "", "unknown_token"),
        ("ids", "²", "unknown_token"),  # str.isdigit() says yes, int() says no
        ("ids", "9" * 5000, "unknown_token"),  # past int()'s digit limit
    ],
)
def test_encode_logit_bias_names_unknown_keys(small, keys, key, kind):
    with pytest.raises(ParamError) as raised:
        encode_logit_bias(small, {key: 1.0}, keys=keys)
    assert raised.value.field == "logit_bias" and raised.value.kind == kind
    assert repr(key[:40])[:-1] in str(raised.value)


@pytest.mark.parametrize("bias", [{"a": "x"}, {"a": None}, {"a": True}, {1: 2.0}, [("a", 1.0)]])
def test_encode_logit_bias_needs_numbers_by_character(small, bias):
    with pytest.raises(ParamError) as raised:
        encode_logit_bias(small, bias)
    assert raised.value.field == "logit_bias"


def test_encode_logit_bias_refuses_to_ban_everything(small):
    everything = {char: -100 for char in small.chars}
    with pytest.raises(ParamError) as raised:
        encode_logit_bias(small, everything)
    assert raised.value.field == "logit_bias"
    del everything["a"]
    assert len(encode_logit_bias(small, everything)) == len(small) - 1


def test_build_params_turns_text_into_the_request(small):
    a, b = small.encode("ab")
    compiled = []

    def regexes(pattern):
        compiled.append(pattern)
        return compile_regex(pattern, small, RegexLimits())

    request = build_params(
        small,
        "ab\r\nc",
        length=7,
        seed=3,
        stop=["ba", "é"],
        logit_bias={"a": -100, "b": 2},
        regex="[ab]+",
        regexes=regexes,
        temperature=0.5,
        top_k=None,  # None: the default
        logprobs=2,
        prompt_logprobs=True,
    )
    assert request.prime == tuple(small.encode("ab\nc")) and request.length == 7
    assert request.seed == 3 and request.stop == ((b, a),)
    assert request.logit_bias == ((a, -100.0), (b, 2.0)) and compiled == ["[ab]+"]
    assert (request.temperature, request.top_k, request.logprobs) == (0.5, 0, 2)
    assert request.prompt_logprobs and request.regex is not None
    assert build_params(small, stop="ab").stop == (tuple(small.encode("ab")),)  # one string
    default = build_params(small)
    assert default.length == DEFAULT_LENGTH and default.prime == tuple(small.encode("\n"))
    assert build_params(small, default_length=9).length == 9
    assert build_params(small, length=5, max_length=5, max_prime_chars=0).length == 5


@pytest.mark.parametrize(
    ("changes", "field", "kind"),
    [
        ({"length": 11, "max_length": 10}, "length", "less_than_equal"),
        ({"length": -1}, "length", "value_error"),
        ({"length": "10", "max_length": 10}, "length", "int_type"),
        ({"length": NAN}, "length", "int_type"),
        ({"prime": "abc", "max_prime_chars": 2}, "prime", "string_too_long"),
        ({"prime": None}, "prime", "string_type"),
        ({"prime": "aXb"}, "prime", "prime_out_of_vocabulary"),
        ({"seed": -1}, "seed", "value_error"),
        ({"stop": ["a"] * (MAX_STOPS + 1)}, "stop", "too_long"),
        ({"stop": 5}, "stop", "list_type"),
        ({"logit_bias": {"X": 1.0}}, "logit_bias", "unknown_character"),
        ({"logit_bias": {"a": NAN}}, "logit_bias", "value_error"),
        ({"regex": 5}, "regex", "string_type"),
        ({"regex": "(a"}, "regex", "regex_invalid"),
        ({"temperature": INF}, "temperature", "value_error"),
        ({"top_p": "x"}, "top_p", "float_type"),
        ({"prompt_logprobs": True}, "prompt_logprobs", "missing_logprobs"),
    ],
)
def test_build_params_names_the_field_of_bad_input(small, changes, field, kind):
    regexes = {"regexes": lambda pattern: compile_regex(pattern, small, RegexLimits())}
    with pytest.raises(ParamError) as raised:
        build_params(small, **{**regexes, **changes})
    assert (raised.value.field, raised.value.kind) == (field, kind)
    assert "\n" not in str(raised.value)


def test_build_params_limits_carry_their_bound(small):
    with pytest.raises(ParamError) as raised:
        build_params(small, "abc", max_prime_chars=2)
    assert raised.value.ctx == {"max_length": 2, "length": 3}
    with pytest.raises(ParamError) as raised:
        build_params(small, length=4, max_length=3)
    assert raised.value.ctx == {"le": 3}


def test_build_params_needs_a_compiler_for_a_regex_or_takes_it_compiled(small):
    with pytest.raises(TypeError, match="regexes"):
        build_params(small, regex="a+")
    automaton = compile_regex("a+", small, RegexLimits())
    assert build_params(small, regex=automaton).regex is automaton
