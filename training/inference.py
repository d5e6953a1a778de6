"""The `sample` sub-command: stream a checkpoint's text to stdout as it is generated."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from model.checkpoint import load_checkpoint
from model.decoder import generate
from model.device import preferred_lstm_impl, resolve_device
from model.sampling import SamplingConfig, prime_ids, resolve_seed


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SamplingConfig()
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a .safetensors file")
    parser.add_argument("--prime", default="", help="text to continue (default: a new paragraph)")
    parser.add_argument(
        "--length",
        type=int,
        default=defaults.length,
        help="characters to generate (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="below 1 more predictable, above 1 more varied (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        help="sample only from the k most likely characters (default: all)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=defaults.top_p,
        help="sample from the smallest set reaching this probability (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="repeatable output; without it a random seed is used and printed to stderr",
    )
    parser.add_argument(
        "--skip-unknown",
        action="store_true",
        help="drop prime characters the model does not know instead of failing",
    )
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or mps (default: cpu)")


def run_sample(args: argparse.Namespace) -> int:
    """Write the prime and its continuation to stdout, flushing every character; the seed
    goes to stderr when it was not given. 2 on bad input."""
    try:
        config = SamplingConfig(
            length=args.length,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=resolve_seed(args.seed),
            skip_unknown=args.skip_unknown,
        )
        device = resolve_device(args.device)
        checkpoint = load_checkpoint(args.checkpoint)
        prime_ids(checkpoint.vocab, args.prime, args.skip_unknown)  # unknown chars fail here
        model = checkpoint.build_model(device)
        model.impl = preferred_lstm_impl(device)
    except (ValueError, OSError) as error:  # CheckpointError, OutOfVocabularyError included
        hint = "; --skip-unknown drops them" if "vocabulary" in str(error) else ""
        print(f"error: {' '.join(str(error).split())}{hint}", file=sys.stderr)
        return 2
    if args.seed is None:
        print(f"seed: {config.seed}", file=sys.stderr)
    try:
        _write(args.prime)
        for char in generate(model, checkpoint.vocab, args.prime, config):
            _write(char)
        _write("\n")
    except BrokenPipeError:  # e.g. `| head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush does not fail again
    return 0


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
