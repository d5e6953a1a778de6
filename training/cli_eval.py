"""The `eval` sub-command: a checkpoint's loss on text files, one line per file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.checkpoint import load_checkpoint
from model.device import resolve_device
from training.evaluate import EVAL_SEQ_LEN, EvalResult, combine_results, evaluate_text


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a .safetensors file")
    parser.add_argument("texts", nargs="+", type=Path, metavar="TEXT_FILE", help="text to score")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    parser.add_argument("--encoding", default="utf-8", help="of the text files (default: utf-8)")
    parser.add_argument(
        "--seq-len",
        type=int,
        default=EVAL_SEQ_LEN,
        help="characters per forward pass; the state carries across (default: %(default)s)",
    )


def run_eval(args: argparse.Namespace) -> int:
    """Print nats/char, bits/char, perplexity, characters scored and characters out of the
    vocabulary (left out) for each file, and their total; 2 on bad input."""
    try:
        if args.seq_len < 1:
            raise ValueError(f"--seq-len must be at least 1, got {args.seq_len}")
        device = resolve_device(args.device)
        checkpoint = load_checkpoint(args.checkpoint)
        results = []
        for path in args.texts:
            text = _read(path, args.encoding)
            result = evaluate_text(checkpoint, text, device, seq_len=args.seq_len)
            results.append(result)
            print(format_result(str(path), result), flush=True)
    except (ValueError, OSError) as error:  # CheckpointError included
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if len(results) > 1:
        print(format_result("total", combine_results(results)))
    return 0


def format_result(name: str, result: EvalResult) -> str:
    return (
        f"{name}: {result.nats_per_char:.4f} nats/char, {result.bits_per_char:.4f} bits/char, "
        f"perplexity {result.perplexity:.3f}, {result.chars:,} chars, "
        f"{result.oov_chars:,} out of vocabulary"
    )


def _read(path: Path, encoding: str) -> str:
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a text file") from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not valid {encoding} text ({error.reason} at byte {error.start})"
        ) from None
    except LookupError:
        raise ValueError(f"unknown text encoding {encoding!r}") from None
