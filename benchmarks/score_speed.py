"""Scoring speed: POST /score of tiny Shakespeare's validation split against `eval`.

    python benchmarks/score_speed.py [--repeats 3] [--text PATH]

The server is `python -m app` (the shipped checkpoint, default settings) in its own
process. The text is the last 10 % of ../shared/data/tinyshakespeare.txt (111,539
characters; another with --text). Prints the seconds of each request (client side, JSON
included) and their median, and the bits/char /score reports beside `python -m training
eval`'s on the same text (characters outside the vocabulary left out by both). Targets:
< 3 s on 2 cores, equal to 1e-4.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from load_client import free_port, wait_healthy  # noqa: E402

from model.checkpoint import load_checkpoint  # noqa: E402
from training.evaluate import evaluate_text  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "shakespeare.safetensors"
TINY = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, help="a text file (default: tiny Shakespeare's val)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.text is not None:
        text = args.text.read_text()
    else:
        corpus = TINY.read_text()
        text = corpus[len(corpus) - round(0.1 * len(corpus)) :]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCESS_LOG": "false", "LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], env=env, cwd=ROOT)
    seconds, result = [], {}
    try:
        wait_healthy(port, server)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            client.post("/score", json={"text": text[:2000], "skip_unknown": True})  # warm-up
            for _ in range(args.repeats):
                started = time.perf_counter()
                response = client.post("/score", json={"text": text, "skip_unknown": True})
                seconds.append(time.perf_counter() - started)
                response.raise_for_status()
                result = response.json()
    finally:
        server.terminate()
        server.wait(30)
    expected = evaluate_text(load_checkpoint(CHECKPOINT), text)
    print(
        f"{os.cpu_count()} CPUs, {len(text):,} characters "
        f"({result['oov_chars']} outside the vocabulary)"
    )
    print("POST /score seconds:", ", ".join(f"{s:.2f}" for s in seconds))
    print(f"median {statistics.median(seconds):.2f} s (target < 3 s)")
    difference = abs(result["bits_per_char"] - expected.bits_per_char)
    print(
        f"bits/char: /score {result['bits_per_char']:.6f}, eval {expected.bits_per_char:.6f}, "
        f"difference {difference:.1e} (target < 1e-4)"
    )


if __name__ == "__main__":
    main()
