"""How fast `prepare` turns a large mixed-script UTF-8 corpus into ids, and its peak memory.

    python benchmarks/prepare_speed.py [--mb 200]

Writes a deterministic synthetic corpus (random words in Latin, Cyrillic, CJK and emoji, from
a seeded numpy generator) to a temporary directory, runs `prepare` on it in a subprocess so
that the subprocess's peak RSS can be read, and prints MB, seconds, MB/s, peak RSS and the
vocabulary size. Targets: at least 20 MB/s on 2 cores, peak RSS under 500 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
# (first code point, number of code points) of each script the words are drawn from.
SCRIPTS = {
    "latin": (ord("a"), 26),
    "cyrillic": (0x430, 32),
    "cjk": (0x4E00, 3000),
    "emoji": (0x1F600, 80),
}
PREPARE = """
import sys
from pathlib import Path
from training.prepare import PrepareConfig, prepare
prepare([sys.argv[1]], Path(sys.argv[2]), PrepareConfig(), progress=False)
"""


def make_words(rng: np.random.Generator, count: int) -> list[str]:
    """`count` words of 1-9 characters, each from one script (Latin most often)."""
    names = list(SCRIPTS)
    script_of_word = rng.choice(len(names), size=count, p=[0.55, 0.25, 0.15, 0.05])
    words = []
    for script in script_of_word:
        start, size = SCRIPTS[names[script]]
        codes = start + rng.integers(0, size, size=int(rng.integers(1, 10)))
        words.append("".join(map(chr, codes)))
    return words


def write_corpus(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Write about `size_bytes` of UTF-8 text (whole lines) to `path`; returns its size."""
    rng = np.random.default_rng(seed)
    words = np.array(make_words(rng, 20_000), dtype=object)
    written = 0
    with path.open("wb") as file:
        while written < size_bytes:
            # A block of ~1 MB: random words, 12 to a line.
            picks = words[rng.integers(0, len(words), size=120_000)].reshape(-1, 12)
            block = "\n".join(" ".join(line) for line in picks).encode() + b"\n"
            if len(block) > size_bytes - written:  # the last block: cut after a whole line
                cut = block.rfind(b"\n", 0, size_bytes - written)
                if cut < 0:
                    break
                block = block[: cut + 1]
            file.write(block)
            written += len(block)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200, help="corpus size in MB (10^6 bytes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prepare-speed-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        size = write_corpus(corpus, int(args.mb * MB))
        out = Path(tmp) / "prepared"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", PREPARE, str(corpus), str(out)], cwd=ROOT, check=True)
        seconds = time.perf_counter() - start
        # ru_maxrss: the largest resident set of any waited-for child, in KiB on Linux.
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / MB
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    mb = size / MB
    rate = mb / seconds
    print(f"{'MB':>8} {'seconds':>8} {'MB/s':>8} {'peak RSS MB':>12} {'vocab':>6} {'dtype':>7}")
    print(
        f"{mb:8.1f} {seconds:8.2f} {rate:8.1f} {peak_mb:12.1f} {len(meta['vocab']['chars']):6d} "
        f"{meta['dtype']:>7}"
    )
    print(
        f"prepare: {rate:.1f} MB/s, peak RSS {peak_mb:.0f} MB on {mb:.0f} MB of mixed-script "
        f"UTF-8 (targets: >= 20 MB/s, < 500 MB)"
    )


if __name__ == "__main__":
    main()
