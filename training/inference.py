"""Inference from the command line, over the library the service uses (model/decoding,
model/scoring.py), so a seed gives the same text here as from the service:

    sample   a checkpoint's text, streamed to stdout, with every option of the API; it may
             continue a text from its state (--state-in) and save the state (--state-out)
    score    how surprising each character of a text is to a checkpoint
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

from model.checkpoint import Checkpoint, load_checkpoint
from model.decoding.generate import DecodingFailed, SingleStream
from model.decoding.params import DEFAULT_LENGTH, MAX_LOGPROBS, GenerationParams, build_params
from model.decoding.regex import RegexLimits, compile_regex
from model.device import resolve_device
from model.scoring import Scorer, score_text
from model.state import RecurrentState, StateCodec, continuation_prime
from model.text import as_read, newline_mode
from training.sources import read_text_file

FLAGS = {  # GenerationParams field → its flag, for one-line errors that name the flag
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "repetition_penalty": "--repetition-penalty",
    "repeat_last_n": "--repeat-last-n",
    "frequency_penalty": "--frequency-penalty",
    "presence_penalty": "--presence-penalty",
    "logit_bias": "--logit-bias",
    "prime": "--prime",
}


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GenerationParams
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a .safetensors file")
    parser.add_argument("--prime", default="", help="text to continue (default: a new paragraph)")
    parser.add_argument(
        "--length", type=int, default=DEFAULT_LENGTH, help="characters (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="0 greedy, below 1 more predictable, above 1 more varied (default: %(default)s)",
    )
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="0: all (default)")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus (default: 1)")
    parser.add_argument(
        "--min-p", type=float, default=defaults.min_p, help="drop chars below min_p × the top one"
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=defaults.repetition_penalty,
        help="> 1 discourages the last --repeat-last-n chars (default: 1, off)",
    )
    parser.add_argument(
        "--repeat-last-n", type=int, default=defaults.repeat_last_n, help="(default: %(default)s)"
    )
    parser.add_argument("--frequency-penalty", type=float, default=defaults.frequency_penalty)
    parser.add_argument("--presence-penalty", type=float, default=defaults.presence_penalty)
    parser.add_argument(
        "--logit-bias",
        action="append",
        default=[],
        metavar="CHAR=BIAS",
        help="add BIAS (-100 to 100) to CHAR's logit; -100 bans it; repeatable",
    )
    parser.add_argument(
        "--stop", action="append", default=[], help="end at this string (not printed); repeatable"
    )
    parser.add_argument("--regex", help="the output must match this regular expression")
    parser.add_argument(
        "--logprobs",
        type=int,
        help=f"write each generated char's log-probability and this many (0-{MAX_LOGPROBS}) "
        "alternatives to stderr, one JSON line per char",
    )
    parser.add_argument(
        "--seed", type=int, help="repeatable output; without it a seed is chosen and printed"
    )
    parser.add_argument(
        "--skip-unknown",
        action="store_true",
        help="drop prime characters the model does not know instead of failing",
    )
    parser.add_argument(
        "--state-in",
        type=Path,
        metavar="FILE",
        help="continue the text whose state FILE holds (written by --state-out); --prime "
        "is then the text that follows it (default: none)",
    )
    parser.add_argument(
        "--state-out",
        type=Path,
        metavar="FILE",
        help="write the state of the whole text to FILE (the state's text, the prime and "
        "every generated character, a stop string included), to continue it with --state-in",
    )
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or mps (default: cpu)")


def run_sample(args: argparse.Namespace) -> int:
    """Write the prime and its continuation to stdout, flushing as characters come; the
    seed goes to stderr when it was not given, and how generation ended. 2 on bad input."""
    try:
        device = resolve_device(args.device)
        checkpoint = load_checkpoint(args.checkpoint)
        params = sample_params(checkpoint, args)
        model = checkpoint.build_model(device)
        codec = StateCodec.for_model(model, checkpoint.vocab) if _uses_state(args) else None
        state = None
        if args.state_in is not None:
            state = read_state(args.state_in, codec)
            prime = continuation_prime(
                state,
                checkpoint.vocab,
                args.prime,
                skip_unknown=args.skip_unknown,
                newlines=newline_mode(checkpoint.info, checkpoint.vocab),
            )
            params = dataclasses.replace(params, prime=prime)
        if args.state_out is not None and not args.state_out.parent.is_dir():
            raise ValueError(f"--state-out: no such directory: {args.state_out.parent}")
        if args.state_out is not None and args.state_out.is_dir():
            raise ValueError(f"--state-out: {args.state_out} is a directory")
    except (ValueError, OSError) as error:  # CheckpointError, ParamError included
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    if args.seed is None:
        print(f"seed: {params.seed}", file=sys.stderr)
    vocab = checkpoint.vocab
    stream = SingleStream(model, params, state=state)
    try:
        _write(args.prime)  # as typed
        for ids in stream:
            _write(vocab.decode(ids))
        _write("\n")
    except BrokenPipeError:
        return _reader_left()
    except DecodingFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output = stream.output
    if args.logprobs is not None:
        for entry in output.logprobs.slice(0, output.released, args.logprobs).entries():
            top = {vocab.chars[i]: round(lp, 6) for i, lp in entry.top}
            line = {"char": vocab.chars[entry.id], "logprob": round(entry.logprob, 6), "top": top}
            print(json.dumps(line, ensure_ascii=False), file=sys.stderr)
    print(f"finished: {output.finish_reason}", file=sys.stderr)
    if args.state_out is not None:
        assert codec is not None
        try:
            write_state(args.state_out, codec.encode(stream.final_state()))
        except OSError as error:
            print(f"error: --state-out: {_one_line(error)}", file=sys.stderr)
            return 2
    return 0


def _uses_state(args: argparse.Namespace) -> bool:
    return args.state_in is not None or args.state_out is not None


def read_state(path: Path, codec: StateCodec) -> RecurrentState:
    """The state a --state-in file holds (its token, surrounding whitespace ignored);
    errors name the flag."""
    try:
        size = path.stat().st_size
        if size > codec.max_token_chars + 64:  # not read: no token is this long
            raise ValueError(
                f"--state-in: {path} holds {size} bytes; a state of this model is at most "
                f"{codec.max_token_chars} characters"
            )
        token = path.read_bytes().decode("ascii").strip()
    except FileNotFoundError:
        raise ValueError(f"--state-in: no such file: {path}") from None
    except UnicodeDecodeError:
        raise ValueError(
            "--state-in: state: not a state token (URL-safe base64 expected)"
        ) from None
    except OSError as error:
        raise ValueError(f"--state-in: {path}: {error.strerror or error}") from None
    try:
        return codec.decode(token)
    except ValueError as error:  # ParamError: "state: why"
        raise ValueError(f"--state-in: {error}") from None


def write_state(path: Path, token: str) -> None:
    """The token and a newline, replacing the file whole (a reader never sees half)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(token + "\n", encoding="ascii")
    temporary.replace(path)


def sample_params(checkpoint: Checkpoint, args: argparse.Namespace) -> GenerationParams:
    """The flags as GenerationParams; a ParamError names the flag."""
    vocab = checkpoint.vocab
    bias = {}
    for item in args.logit_bias:
        char, separator, value = item.rpartition("=")
        try:
            bias[char] = float(value)
        except ValueError:
            separator = ""
        if not separator:
            raise ValueError(f"--logit-bias: {item!r} is not CHAR=BIAS")
    try:
        return build_params(
            vocab,
            args.prime,
            length=args.length,
            seed=args.seed,
            stop=args.stop,
            logit_bias=bias,
            regex=args.regex or None,
            regexes=lambda pattern: compile_regex(pattern, vocab, RegexLimits()),
            skip_unknown=args.skip_unknown,
            newlines=newline_mode(checkpoint.info, vocab),
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            repeat_last_n=args.repeat_last_n,
            frequency_penalty=args.frequency_penalty,
            presence_penalty=args.presence_penalty,
            logprobs=args.logprobs,
        )
    except ValueError as error:
        field = getattr(error, "field", None)
        if field is not None:
            flag = FLAGS.get(field, f"--{field}")
            raise ValueError(f"{flag}: {error.message}") from None  # type: ignore[attr-defined]
        raise


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a .safetensors file")
    parser.add_argument("text_file", type=Path, metavar="TEXT_FILE", help="the text to score")
    parser.add_argument("--encoding", default="utf-8", help="of the text file (default: utf-8)")
    parser.add_argument(
        "--per-char",
        action="store_true",
        help="also one JSON line per character: its surprisal in bits and the --top-n "
        "likeliest characters at that position",
    )
    parser.add_argument("--top-n", type=int, default=0, help=f"0-{MAX_LOGPROBS} (default: 0)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or mps (default: cpu)")


def run_score(args: argparse.Namespace) -> int:
    """Print bits/char (as `eval` does; characters outside the vocabulary are left out and
    counted), and with --per-char each character's surprisal. 2 on bad input."""
    try:
        if not 0 <= args.top_n <= MAX_LOGPROBS:
            raise ValueError(f"--top-n must be in [0, {MAX_LOGPROBS}], got {args.top_n}")
        device = resolve_device(args.device)
        checkpoint = load_checkpoint(args.checkpoint)
        text = read_text_file(args.text_file, args.encoding)
        vocab = checkpoint.vocab
        text = as_read(text, newline_mode(checkpoint.info, vocab))
        kept = [char for char in text if char in vocab]
        if len(kept) < 2:
            raise ValueError("need at least 2 characters the model knows to score")
        model = checkpoint.build_model(device)
    except (ValueError, OSError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    scorer = score_text(model, vocab.encode("".join(kept)), args.top_n)
    try:
        if args.per_char:
            for position, char in enumerate(kept):
                print(
                    json.dumps(_char_line(scorer, position, char, vocab.chars), ensure_ascii=False)
                )
        print(
            f"{args.text_file}: {scorer.nats_per_char:.4f} nats/char, "
            f"{scorer.bits_per_char:.4f} bits/char, "
            f"perplexity {math.exp(scorer.nats_per_char):.3f}, "
            f"{len(kept) - 1:,} chars, {len(text) - len(kept):,} out of vocabulary"
        )
    except BrokenPipeError:
        return _reader_left()
    return 0


def _char_line(scorer: Scorer, position: int, char: str, chars: tuple[str, ...]) -> dict:
    """One character of `score --per-char`: its surprisal in bits, and the likeliest ones."""
    line: dict = {"char": char}
    logprob = scorer.logprobs[position]
    if not math.isnan(logprob):
        line["bits"] = round(-logprob / math.log(2), 6)
        if scorer.top_n:
            ids, logprobs = scorer.top_ids[position], scorer.top_logprobs[position]
            line["top"] = {chars[i]: round(lp, 6) for i, lp in zip(ids, logprobs, strict=True)}
    return line


def _reader_left() -> int:
    """stdout's reader closed it (`| head`): it has all it wanted, so that is a success."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush does not fail again
    return 0


def _one_line(error: Exception) -> str:
    message = " ".join(str(error).split())
    if "vocabulary" in message and "skip_unknown" in message:
        message = message.replace("set skip_unknown", "--skip-unknown")
    return message


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
