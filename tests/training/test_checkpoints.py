import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from training.checkpoints import RunCounters
from training.cli import main
from training.dataset import load_prepared
from training.loop import Trainer, TrainHooks
from training.recipe import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _config(data_dir, out_dir, **changes):
    # Dropout on, two layers and a cosine schedule: every piece of state an exact resume
    # must restore is in use. 25 batches an epoch, so the run crosses an epoch boundary.
    values = {
        "hidden_size": 16,
        "num_layers": 2,
        "dropout": 0.3,
        "batch_size": 4,
        "seq_len": 16,
        "lr": 1e-2,
        "warmup_steps": 3,
        "eval_every": 10,
        "max_steps": 34,
        "threads": 1,
        "sample_length": 5,
    }
    return TrainConfig(data_dir, out_dir, **(values | changes))


def _weights(run):
    return load_checkpoint(run / "last.safetensors").weights


def _raw_weights(run):
    state = load_checkpoint(run / "last.safetensors").training_state
    return state["weight_average"]["raw_weights"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


def _numbers(run):
    skip = {"elapsed_seconds", "chars_per_second"}
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in skip} for line in lines]


def test_stop_and_resume_equals_one_run_bit_for_bit(tmp_path, data_dir):
    corpus = load_prepared(data_dir)
    whole = Trainer(_config(data_dir, tmp_path / "whole"), corpus, progress=False).run()
    assert whole.epoch > 1

    config = _config(data_dir, tmp_path / "split")
    first = Trainer(config, corpus, progress=False)
    first.hooks = TrainHooks(should_stop=lambda: first.counters.step >= 13)  # mid-epoch
    assert first.run().stop_reason == "interrupted"
    checkpoint = load_checkpoint(tmp_path / "split" / "last.safetensors")
    second = Trainer(config, corpus, resume=checkpoint, progress=False).run()

    assert (second.step, second.tokens, second.epoch) == (whole.step, whole.tokens, whole.epoch)
    assert second.best_val_loss == whole.best_val_loss
    _assert_same_weights(_weights(tmp_path / "whole"), _weights(tmp_path / "split"))
    _assert_same_weights(_raw_weights(tmp_path / "whole"), _raw_weights(tmp_path / "split"))
    assert _numbers(tmp_path / "whole") == _numbers(tmp_path / "split")


def test_a_run_without_an_average_can_start_one_when_resumed(tmp_path, data_dir):
    corpus = load_prepared(data_dir)
    config = _config(data_dir, tmp_path / "run", ema_decay=0.0, max_steps=4, sample_length=0)
    Trainer(config, corpus, progress=False).run()
    last = load_checkpoint(tmp_path / "run" / "last.safetensors")
    resumed = config.with_changes(ema_decay=0.9, max_steps=6)
    trainer = Trainer(resumed, corpus, resume=last, progress=False)
    _assert_same_weights(trainer.model.state_dict(), last.weights)  # raw: where it stopped
    trainer.run()
    state = load_checkpoint(tmp_path / "run" / "last.safetensors").training_state
    assert state["weight_average"]["updates"] == 2  # started at the resume


def test_seeded_runs_repeat_exactly(tmp_path, data_dir):
    corpus = load_prepared(data_dir)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        config = _config(data_dir, tmp_path / name, seed=seed, max_steps=6, sample_length=0)
        Trainer(config, corpus, progress=False).run()
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    a, c = _weights(tmp_path / "a"), _weights(tmp_path / "c")
    assert not torch.equal(a["head.weight"], c["head.weight"])


def test_resume_refuses_a_different_shape_or_an_inference_checkpoint(tmp_path, data_dir):
    corpus = load_prepared(data_dir)
    config = _config(data_dir, tmp_path / "run", max_steps=2, sample_length=0)
    Trainer(config, corpus, progress=False).run()
    last = load_checkpoint(tmp_path / "run" / "last.safetensors")
    with pytest.raises(ValueError, match="cannot change batch_size when resuming"):
        Trainer(config.with_changes(batch_size=2), corpus, resume=last)
    other = dataclasses.replace(corpus, meta=corpus.meta | {"source_chars": 99})
    with pytest.raises(ValueError, match="holds 99 characters, the run was trained on 1800"):
        Trainer(config, other, resume=last)
    best = load_checkpoint(tmp_path / "run" / "best.safetensors")
    with pytest.raises(ValueError, match="no training state"):
        Trainer(config, corpus, resume=best)


def test_checkpoints_hold_no_absolute_path_and_resume_after_the_project_moves(tmp_path, data_dir):
    root = tmp_path / "project"
    shutil.copytree(data_dir, root / "data")
    run = root / "runs" / "a"
    config = _config(root / "data", run, max_steps=4, sample_length=0)
    Trainer(config, load_prepared(root / "data"), progress=False).run()
    for name in ("last.safetensors", "best.safetensors"):
        info = load_checkpoint(run / name).info
        assert info["train_config"]["data_dir"] == "../../data"
        assert info["train_config"]["out_dir"] == "."
        assert str(tmp_path) not in json.dumps(info)
    moved = tmp_path / "elsewhere"
    shutil.move(root, moved)
    with (moved / "runs" / "a" / "metrics.jsonl").open("a") as file:
        file.write("[1, 2]\n")  # a damaged line: skipped, and dropped by the resume
    argv = ["train", "--resume", str(moved / "runs" / "a"), "--max-steps", "6", "--no-progress"]
    assert main(argv) == 0  # the data found from the checkpoint's own directory
    resumed = load_checkpoint(moved / "runs" / "a" / "last.safetensors")
    assert resumed.info["step"] == 6
    assert resumed.info["train_config"]["data_dir"] == "../../data"
    steps = [json.loads(line)["step"] for line in (moved / "runs" / "a" / "metrics.jsonl").open()]
    assert steps == [4, 6]


def test_the_shipped_checkpoint_holds_no_absolute_path():
    info = load_checkpoint(ROOT / "checkpoints" / "shakespeare.safetensors").info
    paths = info["train_config"]["data_dir"], info["train_config"]["out_dir"]
    assert paths == ("../../data/shakespeare", ".")
    assert not any(Path(text).is_absolute() for text in json.dumps(info).split('"'))


@pytest.mark.slow
def test_sigterm_saves_and_the_printed_command_resumes(tmp_path, data_dir):
    run = tmp_path / "run"
    flags = [
        "--hidden-size",
        "16",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--threads",
        "1",
        "--eval-every",
        "2",
        "--sample-length",
        "0",
        "--no-progress",
    ]
    command = [
        sys.executable,
        "-m",
        "training",
        "train",
        str(data_dir),
        "--out",
        str(run),
        "--max-steps",
        "100000",
        *flags,
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text()) and process.poll() is None:
            assert time.monotonic() < deadline, "no evaluation within 120 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    last_line = err.strip().splitlines()[-1]
    assert f"resume with: {sys.executable} -m training train --resume {run}" in last_line
    stopped = load_checkpoint(run / "last.safetensors").info["step"]
    assert stopped >= 2 and f"stopped at step {stopped}" in last_line

    assert main(["train", "--resume", str(run), "--max-steps", str(stopped + 3)]) == 0
    resumed = load_checkpoint(run / "last.safetensors")
    assert resumed.info["step"] == stopped + 3
    assert resumed.training_state["counters"]["position"]["batch"] == (stopped + 3) % 25


def test_the_counters_keep_the_best_evaluation_s_step_for_patience():
    counters = RunCounters()
    for step, loss in ((10, 2.0), (20, 1.5), (30, 1.6), (40, 1.5)):  # a tie is no better
        counters.step = step
        counters.record_evaluation(loss)
    assert (counters.best_val_loss, counters.best_step, counters.evals_since_best) == (1.5, 20, 2)
    saved = json.loads(json.dumps(counters.to_json()))
    assert RunCounters.from_json(saved) == counters
    del saved["best_step"]  # a run saved before the field: resumes without it
    assert RunCounters.from_json(saved).best_step is None
