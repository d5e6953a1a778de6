"""Training memory does not grow with the corpus: peak RSS of a short run on a 10 MB and a
200 MB corpus.

    python benchmarks/train_memory.py [--small-mb 10] [--large-mb 200] [--steps 20]

Writes both corpora with prepare_speed's generator (mixed-script UTF-8), prepares each with
`python -m training prepare --max-vocab 256` (the same vocabulary size for both; the full
~3,100 characters would make the logits, not the corpus, dominate memory and its noise),
then trains each `--repeats` times for `--steps` steps (2×256 LSTM, batch 64 × 128, one
thread, evaluation capped at two validation windows) with `python -m training train` in
a subprocess. Of each run it reads the peak RSS (os.wait4: that child's own high-water
mark) and, sampled every 10 ms from /proc, the peaks of its anonymous memory and of its
file-backed pages (libraries, and any corpus pages mapped into the process).

Identical runs differ by some tens of MB (the allocator's layout), so the verdict compares
the smallest peak of each corpus. Target: under 100 MB apart. The last line is the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prepare_speed import MB, write_corpus  # benchmarks/ is the script's own directory

ROOT = Path(__file__).resolve().parent.parent
TARGET_MB = 100.0
TRAIN_OPTIONS = [
    "--hidden-size=256",
    "--batch-size=64",
    "--seq-len=128",
    "--threads=1",
    "--eval-every=100000",  # only the final evaluation, capped:
    "--eval-batches=2",
    "--sample-length=0",
    "--warmup-steps=5",
    "--no-progress",
]


@dataclass(frozen=True)
class Peak:
    rss_mb: float  # the kernel's high-water mark of the resident set
    anon_mb: float  # sampled peak of anonymous memory (heap, tensors)
    file_mb: float  # sampled peak of file-backed resident pages
    seconds: float


def run_measured(command: list[str]) -> Peak:
    """Run `command` from the repository root and measure it; raises CalledProcessError
    when it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    sampled = {"RssAnon": 0, "RssFile": 0}
    while True:
        # wait4: this child's own resource usage (ru_maxrss in KiB on Linux), not the
        # maximum over every child so far as RUSAGE_CHILDREN would give.
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        for name, kib in _status(process.pid).items():
            sampled[name] = max(sampled[name], kib)
        time.sleep(0.01)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    kib = 1024 / MB
    return Peak(
        usage.ru_maxrss * kib,
        sampled["RssAnon"] * kib,
        sampled["RssFile"] * kib,
        time.perf_counter() - started,
    )


def _status(pid: int) -> dict[str, int]:
    """RssAnon and RssFile of a running process, KiB (empty once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines)
    return {k: int(v.split()[0]) for k, v in fields if k in ("RssAnon", "RssFile")}


def measure(size_mb: float, args: argparse.Namespace, tmp: Path) -> tuple[list[Peak], int, int]:
    """The training runs' peaks on a corpus of size_mb, its training ids and vocabulary."""
    corpus = tmp / f"corpus-{size_mb:g}MB.txt"
    write_corpus(corpus, int(size_mb * MB))
    data = tmp / f"data-{size_mb:g}"
    module = [sys.executable, "-m", "training"]
    prepare = [*module, "prepare", str(corpus), "--out", str(data), "--no-progress"]
    subprocess.run([*prepare, f"--max-vocab={args.max_vocab}"], cwd=ROOT, check=True)
    corpus.unlink()  # keep the disk use to the prepared ids
    peaks = []
    for repeat in range(args.repeats):
        run = tmp / f"run-{size_mb:g}-{repeat}"
        train = [*module, "train", str(data), "--out", str(run), f"--max-steps={args.steps}"]
        peaks.append(run_measured([*train, *TRAIN_OPTIONS]))
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    ids = (data / "train.bin").stat().st_size // np.dtype(meta["dtype"]).itemsize
    return peaks, ids, len(meta["vocab"]["chars"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=float, default=10, help="the small corpus, MB")
    parser.add_argument("--large-mb", type=float, default=200, help="the large corpus, MB")
    parser.add_argument("--steps", type=int, default=20, help="training steps of each run")
    parser.add_argument("--repeats", type=int, default=3, help="training runs per corpus")
    parser.add_argument("--max-vocab", type=int, default=256, help="prepare's --max-vocab")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        for size in (args.small_mb, args.large_mb):
            results[size] = measure(size, args, Path(tmp))
    print(
        f"{'corpus MB':>10} {'train ids':>12} {'vocab':>6} {'steps':>6} {'s/run':>6} "
        f"{'peak RSS MB (min-max)':>22} {'anon MB':>8} {'file MB':>8}"
    )
    for size, (peaks, ids, vocab) in results.items():
        rss = [p.rss_mb for p in peaks]
        seconds = statistics.median(p.seconds for p in peaks)
        print(
            f"{size:10.0f} {ids:12,d} {vocab:6d} {args.steps:6d} {seconds:6.1f} "
            f"{f'{min(rss):.0f}-{max(rss):.0f}':>22} {min(p.anon_mb for p in peaks):8.0f} "
            f"{max(p.file_mb for p in peaks):8.0f}"
        )
    small = min(p.rss_mb for p in results[args.small_mb][0])
    large = min(p.rss_mb for p in results[args.large_mb][0])
    difference = large - small
    verdict = "ok" if abs(difference) < TARGET_MB else "OVER TARGET"
    print(
        f"train memory: peak RSS {small:.0f} MB on {args.small_mb:g} MB, {large:.0f} MB on "
        f"{args.large_mb:g} MB of text: difference {difference:+.0f} MB "
        f"(target < {TARGET_MB:.0f} MB: {verdict})"
    )


if __name__ == "__main__":
    main()
