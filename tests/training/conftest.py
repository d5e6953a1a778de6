"""Shared fixtures of the training tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from training.cli import main
from training.prepare import PrepareConfig, prepare


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Train on one intra-op thread: on the small shared machines the tests run on, idle
    OpenMP workers of a second thread make tiny steps erratic. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FOX = "the quick brown fox jumps over the lazy dog.\n"


def prepare_fox(root: Path, repeats: int) -> Path:
    """A prepared-data directory of `repeats` fox sentences (45 characters each)."""
    (root / "fox.txt").write_text(FOX * repeats)
    config = PrepareConfig(min_chars=1, min_val_chars=1)
    prepare([str(root / "fox.txt")], root / "data", config, progress=False)
    return root / "data"


@pytest.fixture(scope="session")
def fox_data() -> Callable[[Path, int], Path]:
    """`prepare_fox`, for a module that needs another size of the corpus."""
    return prepare_fox


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,800 characters of fox sentences, prepared once per test module."""
    return prepare_fox(tmp_path_factory.mktemp("corpus"), 40)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text file, its prepared data and a small run trained on it, all through the command
    line (once per test module): root/fox.txt (1,800 characters), root/data, root/run."""
    root = tmp_path_factory.mktemp("cli")
    (root / "fox.txt").write_text(FOX * 40)
    shape = ["--batch-size", "4", "--seq-len", "16", "--no-progress"]
    assert main(["prepare", str(root / "fox.txt"), "--out", str(root / "data"), *shape]) == 0
    train = ["train", str(root / "data"), "--out", str(root / "run"), *shape]
    train += ["--max-steps", "12", "--eval-every", "6", "--lr", "0.01", "--betas", "0.9", "0.95"]
    train += ["--hidden-size", "16", "--num-layers", "1", "--threads", "1", "--sample-length", "10"]
    assert main(train) == 0
    return root
