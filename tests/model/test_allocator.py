"""model/allocator.py: the service's setting gives large blocks back to the system when
freed after a larger one, where glibc's moving mmap threshold (the control) keeps them;
training's keeps them."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from model.allocator import return_freed_memory

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt's threshold is glibc's"
)

# A larger block freed first (glibc then raises its threshold to its size), then 200 blocks
# of 600 kB, each beside a small block that stays: what freeing the 200 gives back.
SCENARIO = """
import sys
import numpy as np
from model.allocator import keep_freed_memory, return_freed_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "returned":
    assert return_freed_memory()
elif sys.argv[1] == "kept":
    assert keep_freed_memory()
big = np.ones(1 << 20)  # 8 MB
del big
blocks, kept = [], []
for _ in range(200):
    blocks.append(np.ones(600_000 // 8))
    kept.append(bytearray(2000))
held = rss_mb()
del blocks
print(held - rss_mb())
"""


def given_back_mb(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return float(result.stdout)


def test_the_services_freed_large_blocks_go_back_to_the_system() -> None:
    assert given_back_mb("returned") > 100  # of 120 MB
    assert given_back_mb("moving") < 40  # glibc's own behaviour: they stay in its heap


def test_a_threshold_set_in_the_environment_is_left_alone(monkeypatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert return_freed_memory() is False


def test_training_keeps_its_freed_memory() -> None:
    assert given_back_mb("kept") < 40  # in the heap, for the next step's buffers
