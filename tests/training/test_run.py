import io
import os
import signal
from pathlib import Path

import pytest
import torch

from model.config import ModelConfig
from model.network import CharRNN
from training.batches import BatchPosition
from training.checkpoints import RunCounters
from training.recipe import TrainConfig
from training.run import (
    STOP_REASONS,
    EvalRecord,
    RunDirectory,
    TrainingProgress,
    format_duration,
    format_record,
    reason_code,
    reason_from_code,
    resume_path,
    start_line,
    stop_on_signals,
    stop_reason,
)


def _record(step):
    return EvalRecord(step, step / 10, step * 64, 1.0, 2.0, 1.5, 2.16, 1e-3, 1e4, "é")


def test_metrics_append_read_and_cut_back(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.write_config(TrainConfig(Path("d"), run.path, max_steps=3))
    for step in (10, 20, 30):
        run.append_metrics(_record(step))
    with run.metrics.open("a") as file:
        file.write('{"step": 40, "val_lo')  # a crash mid-line
    assert [r["step"] for r in run.read_metrics()] == [10, 20, 30]
    assert run.read_metrics()[0]["sample"] == "é"
    assert [r["step"] for r in run.keep_metrics_up_to(20)] == [10, 20]
    assert len(run.metrics.read_text().splitlines()) == 2
    assert RunDirectory(tmp_path / "new").keep_metrics_up_to(0) == []


@pytest.mark.parametrize(
    "damaged",
    ["[1, 2]", "42", '"text"', "null", '{"val_loss": 1.0}', '{"step": "ten"}', '{"step": true}'],
)
def test_lines_that_are_not_records_are_skipped_and_dropped(tmp_path, damaged):
    run = RunDirectory(tmp_path / "run")
    run.write_config(TrainConfig(Path("d"), run.path, max_steps=3))
    run.append_metrics(_record(10))
    with run.metrics.open("ab") as file:
        file.write(damaged.encode() + b"\n" + b'{"step": 12, "sample": "\xff"}\n')  # not UTF-8
    run.append_metrics(_record(20))
    assert [r["step"] for r in run.read_metrics()] == [10, 12, 20]
    assert [r["step"] for r in run.keep_metrics_up_to(15)] == [10, 12]
    assert len(run.metrics.read_text(encoding="utf-8").splitlines()) == 2


def test_files_reach_the_disk_before_they_are_renamed_into_place(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_ino)))
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append(("replace", b)), real_replace(a, b))
    )
    run = RunDirectory(tmp_path / "run")
    run.write_config(TrainConfig(Path("d"), run.path, max_steps=3))
    run.append_metrics(_record(10))
    run.keep_metrics_up_to(10)
    config_inode, metrics_inode = run.config.stat().st_ino, run.metrics.stat().st_ino
    assert events == [
        ("fsync", config_inode),  # the temporary file that becomes config.json
        ("replace", run.config),
        ("fsync", events[2][1]),  # the appended metrics file
        ("fsync", metrics_inode),  # its rewritten copy, before it replaces the file
        ("replace", run.metrics),
    ]
    assert real_fsync is not os.fsync


def test_resume_path(tmp_path):
    assert resume_path(tmp_path) == tmp_path / "last.safetensors"
    assert resume_path(tmp_path / "x.safetensors") == tmp_path / "x.safetensors"


RECORD = EvalRecord(500, 1.623, 32000, 123.4, 1.42131, 1.50123, 2.16581, 2.85e-3, 41234.0, "ab")


def test_evaluation_line():
    assert format_record(RECORD, 3000) == (
        "step 500/3000 | epoch 1.62 | train 1.4213 | val 1.5012 (2.1658 bits/char) | "
        "lr 2.85e-03 | 41.2k chars/s | 2m03s"
    )
    assert format_duration(3725) == "1h02m05s"


def test_no_bar_without_a_terminal_but_the_lines_still_come():
    stream = io.StringIO()
    progress = TrainingProgress(initial=0, total=10, show_bar=True, stream=stream)
    assert not progress.enabled
    progress.advance(2.0, 1000.0)
    progress.evaluated(RECORD, 3000)
    progress.close()
    assert (
        stream.getvalue() == format_record(RECORD, 3000) + "\n--- sample at step 500 ---\nab\n---\n"
    )


def test_start_line():
    model = CharRNN(ModelConfig(10, hidden_size=8, num_layers=1))
    line = start_line(model, "fused", torch.device("cpu"), 7, 0, None)
    assert line.startswith("training 0.00M parameters (lstm, fused) on cpu, 7 batches an epoch")


def test_the_first_signal_asks_to_stop_and_the_second_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        assert not stop()
        signal.raise_signal(signal.SIGINT)
        assert stop() and stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):  # the previous handler is back
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_exit_code_and_ignored_signals_stay_ignored():
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with stop_on_signals() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert not stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with stop_on_signals() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.exit_code == 143
    finally:
        signal.signal(signal.SIGTERM, before)


def _limits(**limits):
    return TrainConfig("data", "run", **limits)


def test_the_first_limit_reached_stops_the_run():
    counters = RunCounters(step=10, position=BatchPosition(epoch=2, batch=0), evals_since_best=3)
    assert stop_reason(_limits(max_steps=11), counters, 0.0, False) is None
    assert stop_reason(_limits(max_steps=10), counters, 0.0, False) == "max_steps"
    assert stop_reason(_limits(max_epochs=2), counters, 0.0, False) == "max_epochs"
    assert stop_reason(_limits(max_minutes=1), counters, 60.0, False) == "max_minutes"
    assert stop_reason(_limits(max_steps=99, patience=3), counters, 0.0, False) == "early_stopping"
    assert stop_reason(_limits(max_steps=99), counters, 0.0, True) == "interrupted"


def test_codes_order_the_reasons_the_ranks_agree_on():
    assert reason_code(None) == 0 and reason_from_code(0) is None
    codes = [reason_code(r) for r in STOP_REASONS]
    assert [reason_from_code(c) for c in codes] == list(STOP_REASONS)
    # A rank out of time or interrupted outweighs the limits every rank reaches together.
    assert max(codes) == reason_code("interrupted")
    assert reason_code("max_minutes") > reason_code("max_steps")
