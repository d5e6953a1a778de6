"""Data-parallel training with gloo on the CPU: ranks are started as torchrun starts them
(the CLI in subprocesses, placed by WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR/MASTER_PORT)."""

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from training.cli import main
from training.dataset import load_prepared
from training.distributed import Distributed
from training.loop import Trainer
from training.recipe import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
# Dropout 0 so the ranks' RNG streams do not matter; a constant rate after the warm-up so a
# run stopped at step 3 and resumed to 6 follows the same rates as one run to 6.
OPTIONS = {
    "hidden_size": 16,
    "num_layers": 2,
    "dropout": 0.0,
    "batch_size": 4,
    "seq_len": 16,
    "lr": 1e-2,
    "warmup_steps": 2,
    "schedule": "constant",
    "eval_every": 3,
    "threads": 1,
    "sample_length": 5,
}


def _free_port() -> int:
    """A free port below the kernel's ephemeral range. Rank 1 keeps connecting to the store
    until rank 0 listens, and a connection to an unused port inside that range can get that
    very port as its own source and connect to itself (TCP self-connect), after which rank 0
    cannot listen there (EADDRINUSE)."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    for port in random.Random().sample(range(10000, low), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {
        "WORLD_SIZE": str(world_size),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }


def _cli_args(options: dict) -> list[str]:
    return [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]


def _start_rank(rank: int, port: int, command: list[str]) -> subprocess.Popen:
    env = os.environ | _rank_env(rank, 2, port)
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def _train_two_ranks(args: list[str], monkeypatch, capsys) -> tuple[int, str, str, str]:
    """Rank 1 as a CLI subprocess, rank 0 as the CLI in this process (one torch import
    fewer): (rank 0's status, its stdout, its stderr, rank 1's stderr)."""
    port = _free_port()
    command = [sys.executable, "-m", "training", "train", *args, "--no-progress"]
    other = _start_rank(1, port, command)
    try:
        for name, value in _rank_env(0, 2, port).items():
            monkeypatch.setenv(name, value)
        status = main(["train", *args, "--no-progress"])
        _, other_err = other.communicate(timeout=120)
    finally:
        other.kill()
    assert other.returncode == 0, other_err
    captured = capsys.readouterr()
    return status, captured.out, captured.err, other_err


def test_two_ranks_equal_one_process_and_resume_exactly(tmp_path, data_dir, monkeypatch, capsys):
    torch.set_num_threads(1)
    one = TrainConfig(data_dir, tmp_path / "one", max_steps=6, **OPTIONS)
    Trainer(one, load_prepared(data_dir), progress=False).run()

    ddp = tmp_path / "ddp"
    args = [str(data_dir), "--out", str(ddp), "--max-steps=3", *_cli_args(OPTIONS)]
    status, out, err, other_err = _train_two_ranks(args, monkeypatch, capsys)
    assert status == 0, err
    assert out.startswith("done (max steps): step 3")
    assert "on cpu × 2 processes" in err
    assert other_err == ""  # only rank 0 reports
    status, out, err, _ = _train_two_ranks(
        ["--resume", str(ddp), "--max-steps=6"], monkeypatch, capsys
    )
    assert status == 0, err

    expected = load_checkpoint(one.out_dir / "last.safetensors")
    actual = load_checkpoint(ddp / "last.safetensors")
    for name, weight in expected.weights.items():
        torch.testing.assert_close(actual.weights[name], weight, atol=1e-5, rtol=0)
    # The carried state is the whole batch's, (L, B, H), in the 1-process column order.
    for saved, reference in zip(
        actual.training_state["hidden"], expected.training_state["hidden"], strict=True
    ):
        assert saved.shape == (2, 4, 16)
        torch.testing.assert_close(saved, reference, atol=1e-5, rtol=0)
    assert len(actual.training_state["other_rngs"]) == 1
    assert actual.info["tokens"] == expected.info["tokens"] == 6 * 4 * 16
    assert actual.info["val_loss"] == pytest.approx(expected.info["val_loss"], abs=1e-5)


def _join_then(action: str) -> str:
    """A rank 1 that joins the group, then dies at once or hangs without taking part."""
    then = "os._exit(3)" if action == "dies" else "time.sleep(60)"
    return f"import os, time, torch.distributed as dist\ndist.init_process_group('gloo')\n{then}\n"


@pytest.mark.parametrize("action", ["dies", "hangs"])
def test_a_lost_rank_fails_the_others_with_one_line(
    tmp_path, data_dir, monkeypatch, capsys, action
):
    port = _free_port()
    options = {**OPTIONS, "max_steps": 50}
    args = ["train", str(data_dir), "--out", str(tmp_path / "run"), "--dist-timeout=5"]
    args += ["--no-progress", *_cli_args(options)]
    other = _start_rank(1, port, [sys.executable, "-c", _join_then(action)])
    try:
        for name, value in _rank_env(0, 2, port).items():
            monkeypatch.setenv(name, value)
        started = time.monotonic()
        status = main(args)
        seconds = time.monotonic() - started
    finally:
        other.kill()
        other.wait()
    err = capsys.readouterr().err
    assert status == 2
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: rank 0 of 2: the other ranks stopped answering"), err
    assert seconds < 30  # the joining takes a torch import; then 5 s at most


def test_placement_from_the_environment():
    assert Distributed.from_environment({}) == Distributed()
    place = Distributed.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (place.rank, place.world_size, place.local_rank, place.enabled) == (3, 4, 1, True)
    assert not place.is_main
    with pytest.raises(ValueError, match="inconsistent"):
        Distributed.from_environment({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="bad torchrun"):
        Distributed.from_environment({"WORLD_SIZE": "two"})


def test_each_rank_takes_its_columns():
    ranks = [Distributed(rank, 4) for rank in range(4)]
    assert [r.batch_columns(8) for r in ranks] == [
        slice(0, 2),
        slice(2, 4),
        slice(4, 6),
        slice(6, 8),
    ]
    assert [r.share(3) for r in ranks] == [slice(0, 0), slice(0, 1), slice(1, 2), slice(2, 3)]
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        ranks[0].batch_columns(6)
    single = Distributed()
    assert single.batch_columns(6) == slice(0, 6)
    loss = torch.tensor(2.0, requires_grad=True)
    assert single.average_gradients([], loss * 1) == 2.0  # one process: nothing to average
    assert single.training_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="not mps"):
        ranks[0].training_device(torch.device("mps"))
