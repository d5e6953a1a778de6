"""The one request type: what to generate and how, made once at the edge and carried
unchanged to the decoder row that serves it.

    HTTP body / OpenAI body / CLI flags ──build_params(vocab, ...)──▶ GenerationParams
    GenerationParams ──engine queue──▶ BatchDecoder.add ──▶ the row's settings arrays

Every default and every bound of a request lives here and is checked here once; the HTTP
schemas read them from this module (`GenerationParams.temperature` is the default
temperature). Text is turned into ids here, once: the prime, the stop strings and the
logit biases (`build_params`, through encode_prime, encode_stops and encode_logit_bias).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass

from model.decoding.automaton import Automaton
from model.text import NEWLINES_LF, as_read
from model.vocab import OutOfVocabularyError, Vocabulary

DEFAULT_LENGTH = 200  # characters, when a request names none (the service: DEFAULT_LENGTH)
MAX_SEED = 2**63 - 1
MAX_TOP_K = 2**31 - 1  # any k ≥ the vocabulary size keeps every character
MAX_TEMPERATURE = 100.0
MAX_STOPS = 4
MAX_STOP_CHARS = 32
MAX_LOGPROBS = 5
MAX_REPEAT_LAST_N = 2048
MAX_REPETITION_PENALTY = 10.0
MAX_FREQUENCY_PENALTY = 2.0  # OpenAI's range for frequency and presence: [-2, 2]
MAX_LOGIT_BIAS = 100.0  # ±100; -MAX_LOGIT_BIAS bans a character outright
MAX_LOGIT_BIAS_ENTRIES = 1024


FLOAT_FIELDS = (  # GenerationParams' settings that are numbers (ints are taken too)
    "temperature",
    "top_p",
    "min_p",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
)


class ParamError(ValueError):
    """A request this model cannot serve. `field` names the culprit (the HTTP edge answers
    422 with it), `kind` is a machine-readable type like pydantic's, `ctx` details."""

    def __init__(self, field: str, message: str, kind: str, ctx: dict | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.kind = kind
        self.ctx = ctx or {}


@dataclass(frozen=True)
class GenerationParams:
    """A request to the decoder: a prime (ids), how many characters to add, the seed of
    its random stream, and the sampler chain's settings, each optional (a neutral default
    turns its link off):

        logit_bias → repetition penalty → frequency/presence penalties → regex mask →
        temperature → top_k → top_p → min_p → draw

    Log-probabilities (`logprobs`: the chosen character's and the top-n alternatives') are
    the network's own distribution, read before the first link.
    """

    prime: tuple[int, ...]  # at least one id: build_params starts an empty prime at "\n"
    length: int  # characters to generate at most
    seed: int
    temperature: float = 1.0  # 0: greedy (the likeliest allowed character)
    top_k: int = 0  # 0 (or ≥ the vocabulary size): no cut
    top_p: float = 1.0  # nucleus: the smallest likeliest set reaching this probability
    min_p: float = 0.0  # drop characters below min_p × the likeliest one's probability
    # llama.cpp/HF semantics: a logit of a character among the last repeat_last_n of the
    # text (prime included) is divided by the penalty when positive, multiplied when not.
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64
    # OpenAI semantics over the generated text: logit -= frequency · count + presence · seen.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (id, bias); -100 bans the character
    stop: tuple[tuple[int, ...], ...] = ()  # generation ends at the first one, cut before it
    logprobs: int | None = None  # None: none; 0-5: the chosen char's and n alternatives
    prompt_logprobs: bool = False  # also the prime's own (each char after the first)
    regex: Automaton | None = None  # the output must match it (model/decoding/regex.py)

    def __post_init__(self) -> None:
        for name in ("length", "seed", "top_k", "repeat_last_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ParamError(name, f"must be an integer, got {value!r}", "int_type")
        if self.logprobs is not None and (
            not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool)
        ):
            raise ParamError("logprobs", f"must be an integer, got {self.logprobs!r}", "int_type")
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ParamError(name, f"must be a number, got {value!r}", "float_type")
        checks = [
            (len(self.prime) >= 1, "prime", "needs at least one character"),
            (self.length >= 0, "length", f"must be ≥ 0, got {self.length}"),
            (0 <= self.seed <= MAX_SEED, "seed", f"must be in [0, 2^63 - 1], got {self.seed}"),
            (
                0 <= self.temperature <= MAX_TEMPERATURE,
                "temperature",
                f"must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature}",
            ),
            (0 <= self.top_k <= MAX_TOP_K, "top_k", f"must be in [0, 2^31 - 1], got {self.top_k}"),
            (0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p}"),
            (
                0 < self.repetition_penalty <= MAX_REPETITION_PENALTY,
                "repetition_penalty",
                f"must be in (0, {MAX_REPETITION_PENALTY:g}], got {self.repetition_penalty}",
            ),
            (
                0 <= self.repeat_last_n <= MAX_REPEAT_LAST_N,
                "repeat_last_n",
                f"must be in [0, {MAX_REPEAT_LAST_N}], got {self.repeat_last_n}",
            ),
            (
                abs(self.frequency_penalty) <= MAX_FREQUENCY_PENALTY,
                "frequency_penalty",
                f"must be in [-2, 2], got {self.frequency_penalty}",
            ),
            (
                abs(self.presence_penalty) <= MAX_FREQUENCY_PENALTY,
                "presence_penalty",
                f"must be in [-2, 2], got {self.presence_penalty}",
            ),
            (
                len(self.logit_bias) <= MAX_LOGIT_BIAS_ENTRIES
                and all(abs(bias) <= MAX_LOGIT_BIAS for _, bias in self.logit_bias),
                "logit_bias",
                f"at most {MAX_LOGIT_BIAS_ENTRIES} entries, each in "
                f"[{-MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]",
            ),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                "logprobs",
                f"must be in [0, {MAX_LOGPROBS}], got {self.logprobs}",
            ),
        ]
        for ok, field, message in checks:
            if not ok:
                raise ParamError(field, message, "value_error")
        check_stops(self.stop)
        if self.prompt_logprobs and self.logprobs is None:
            raise ParamError(
                "prompt_logprobs", f"needs logprobs (0 to {MAX_LOGPROBS})", "missing_logprobs"
            )
        numbers = (
            *(getattr(self, name) for name in FLOAT_FIELDS),
            *(bias for _, bias in self.logit_bias),
        )
        if not all(math.isfinite(number) for number in numbers):
            raise ParamError("sampling", "settings must be finite numbers", "finite_number")


def check_stops(stops: Sequence[Sized]) -> None:
    """The bound on stop strings, as text or as ids: at most MAX_STOPS, each of 1 to
    MAX_STOP_CHARS characters. Raises ParamError("stop")."""
    if len(stops) > MAX_STOPS:
        raise ParamError("stop", f"at most {MAX_STOPS} stop strings", "too_long")
    if not all(1 <= len(stop) <= MAX_STOP_CHARS for stop in stops):
        raise ParamError(
            "stop", f"each stop string has 1 to {MAX_STOP_CHARS} characters", "string_length"
        )


def resolve_seed(seed: int | None) -> int:
    """The seed to use: the caller's, or a fresh random one they can reuse to repeat a run."""
    return secrets.randbelow(MAX_SEED) if seed is None else seed


def encode_prime(
    vocab: Vocabulary, prime: str, *, skip_unknown: bool = False, newlines: str = NEWLINES_LF
) -> tuple[int, ...]:
    """The prime's ids, with the model's own newline handling (model/text.py). An empty
    prime starts from a newline (or the first character), as if at a paragraph's start.
    Raises ParamError("prime") naming the characters the vocabulary lacks."""
    text = as_read(prime, newlines)
    try:
        ids = vocab.encode(text, skip_unknown=skip_unknown)
    except OutOfVocabularyError as error:
        raise ParamError(
            "prime",
            f"{error} (set skip_unknown to drop them)",
            "prime_out_of_vocabulary",
            {"missing": error.missing},
        ) from None
    if ids:
        return tuple(ids)
    return (vocab.encode("\n")[0] if "\n" in vocab else 0,)


def encode_stops(vocab: Vocabulary, stops: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Stop strings as ids. One holding a character the model cannot write can never
    appear in its output, so it is dropped (the request is still valid). A model of
    documents (its vocabulary has a separator) also stops where a document ends, at the
    separator, unless the request's own stops leave no room for it."""
    if (
        isinstance(stops, str)
        or not isinstance(stops, Sequence)
        or not all(isinstance(stop, str) for stop in stops)
    ):
        raise ParamError("stop", "must be a list of strings", "list_type")
    check_stops(stops)
    encoded = []
    for stop in stops:
        if not vocab.missing(stop):
            encoded.append(tuple(vocab.encode(stop)))
    if vocab.separator is not None and len(encoded) < MAX_STOPS:
        end_of_document = tuple(vocab.encode(vocab.separator))
        if end_of_document not in encoded:
            encoded.append(end_of_document)
    return tuple(encoded)


def encode_logit_bias(
    vocab: Vocabulary, bias: Mapping[str, float], *, keys: str = "chars"
) -> tuple[tuple[int, float], ...]:
    """{character: bias} (keys="chars", the native API) or {id as a decimal string: bias}
    (keys="ids", OpenAI's token-id keys) → sorted (id, bias) pairs. Unknown characters or
    ids are a ParamError naming them; so is a bias that bans every character."""
    if not isinstance(bias, Mapping):
        raise ParamError("logit_bias", "must be an object of biases", "dict_type")
    pairs: dict[int, float] = {}
    for key, value in bias.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, (int, float))
        ):
            raise ParamError(
                "logit_bias", f"{key!r}: {value!r} is not a bias (a number)", "float_type"
            )
        if keys == "ids":
            # isdecimal, not isdigit: "²" is a digit int() refuses; and a short key only,
            # as int() refuses strings past 4,300 digits.
            if not (key.isdecimal() and len(key) <= 20) or int(key) >= len(vocab):
                raise ParamError(
                    "logit_bias",
                    f"{key!r} is not a token id of this model (0 to {len(vocab) - 1})",
                    "unknown_token",
                )
            pairs[int(key)] = float(value)
        else:
            if len(key) != 1 or key not in vocab:
                raise ParamError(
                    "logit_bias",
                    f"{key!r} is not a character of this model's vocabulary",
                    "unknown_character",
                )
            pairs[vocab.encode(key)[0]] = float(value)
    if sum(1 for value in pairs.values() if value <= -MAX_LOGIT_BIAS) >= len(vocab):
        raise ParamError("logit_bias", "bans every character of the vocabulary", "value_error")
    return tuple(sorted(pairs.items()))


def too_long(field: str, limit: int, length: int) -> ParamError:
    """The error of a string past its limit, in pydantic's own shape."""
    return ParamError(
        field,
        f"String should have at most {limit} characters",
        "string_too_long",
        {"max_length": limit, "length": length},
    )


def build_params(
    vocab: Vocabulary,
    prime: str = "",
    *,
    length: int | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] = (),
    logit_bias: Mapping[str, float] | None = None,
    regex: str | Automaton | None = None,
    regexes: Callable[[str], Automaton] | None = None,
    skip_unknown: bool = False,
    newlines: str = NEWLINES_LF,
    default_length: int = DEFAULT_LENGTH,
    max_length: int | None = None,
    max_prime_chars: int | None = None,
    **settings: float | int | bool | None,
) -> GenerationParams:
    """A request as text (an HTTP body, an OpenAI body, CLI flags) → GenerationParams.

    prime, stop (one string or several) and logit_bias ({character: bias}) are text, read
    with the model's newline mode `newlines` (model/text.py); skip_unknown drops prime
    characters the vocabulary lacks. length None is `default_length`; seed None is a fresh
    one. regex, a pattern, is compiled by `regexes` (the service's RegexCache.get, which
    compiles a pattern once), or comes compiled (an Automaton). max_length and
    max_prime_chars are the caller's limits (None: none). `settings` are GenerationParams'
    own fields by name (temperature, top_k, top_p, min_p, repetition_penalty,
    repeat_last_n, frequency_penalty, presence_penalty, logprobs, prompt_logprobs); None
    leaves a field at its default. Raises ParamError naming the field."""
    length = default_length if length is None else length
    if (
        max_length is not None
        and isinstance(length, int)  # other types: GenerationParams names them
        and length > max_length
    ):
        raise ParamError(
            "length",
            f"Input should be less than or equal to {max_length}",
            "less_than_equal",
            {"le": max_length},
        )
    if not isinstance(prime, str):
        raise ParamError("prime", f"must be a string, got {type(prime).__name__}", "string_type")
    if max_prime_chars is not None and len(prime) > max_prime_chars:
        raise too_long("prime", max_prime_chars, len(prime))
    if regex is not None and not isinstance(regex, (str, Automaton)):
        raise ParamError("regex", "must be a string", "string_type")
    if isinstance(regex, str) and regexes is None:
        raise TypeError("build_params: a regex needs `regexes`, its compiler")
    ids = encode_prime(vocab, prime, skip_unknown=skip_unknown, newlines=newlines)
    seed = resolve_seed(seed)
    bias = encode_logit_bias(vocab, logit_bias or {})
    stops = encode_stops(vocab, [stop] if isinstance(stop, str) else stop)
    # The costliest check last: a pattern compiles (once, in a cache) only for a request
    # that is otherwise valid.
    automaton = regexes(regex) if isinstance(regex, str) and regexes is not None else regex
    chosen = {name: value for name, value in settings.items() if value is not None}
    return GenerationParams(
        prime=ids,
        length=length,
        seed=seed,
        logit_bias=bias,
        stop=stops,
        regex=automaton,
        **chosen,  # type: ignore[arg-type]
    )
