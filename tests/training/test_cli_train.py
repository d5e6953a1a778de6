import json

import pytest

from training.cli import main


def _one_error_line(capsys, *fragments):
    captured = capsys.readouterr()
    err = captured.err
    assert not captured.out
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_train_writes_the_run_and_a_summary(trained, capsys):
    run = trained / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["max_steps"] == 12 and config["betas"] == [0.9, 0.95]
    assert config["data_dir"] == str(trained / "data")  # absolute: resumable from anywhere
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--resume", str(run), "--max-steps", "14", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("done (max steps): step 14, epoch ") and str(run) in out
    assert out.count("\n") == 1 and out.endswith(f"; serve {run / 'best.safetensors'}\n")


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["train", "{data}", "--out", "{tmp}/r", "--max-steps", "0"], ["max_steps must be"]),
        (["train", "{data}", "--out", "{tmp}/r"], ["at least one of max_epochs"]),
        (["train", "{tmp}/nodata", "--out", "{tmp}/r", "--max-steps", "1"], ["nodata"]),
        (["train", "--max-steps", "1"], ["needs DATA_DIR and --out"]),
        (["train", "{data}", "--out", "{run}", "--max-steps", "1"], ["training split: 1,620 char"]),
        (
            ["train", "{data}", "--out", "{run}", "--max-steps", "1", "--batch-size", "4"],
            ["already holds a run"],
        ),
        (["train", "--resume", "{run}/best.safetensors"], ["no training state"]),
        (["train", "--resume", "{run}", "--seq-len", "8"], ["cannot change seq_len"]),
        (["train", "--resume", "{tmp}/nothing"], ["checkpoint not found"]),
        (["train", "--resume", "{run}", "--preset", "quality"], ["--preset starts a new run"]),
        (["train", "{data}", "--preset", "huge"], ["invalid choice: 'huge'"]),
        (["train", "{data}", "--out", "{tmp}/r", "--lr", "fast"], ["invalid float value"]),
        (
            ["train", "{data}", "--out", "{tmp}/r", "--max-steps", "1", "--ema-decay", "1"],
            ["ema_decay must be in [0, 1)"],
        ),
        (["train", "{data}", "--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_errors_are_one_line_and_exit_2(trained, capsys, argv, fragments):
    paths = {"tmp": trained, "data": trained / "data", "run": trained / "run"}
    assert main([arg.format(**paths) for arg in argv]) == 2
    _one_error_line(capsys, *fragments)


def test_help_exits_0(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max-minutes" in out and "(default: 64)" in out and "--resume RUN_DIR" in out


def test_a_preset_sets_defaults_that_flags_override(trained, capsys):
    run = trained / "preset-run"
    argv = ["train", str(trained / "data"), "--out", str(run), "--preset", "quality"]
    argv += ["--hidden-size", "8", "--batch-size", "4", "--seq-len", "16", "--max-steps", "1"]
    assert main([*argv, "--sample-length", "0", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["dropout"], config["lr"]) == (0.25, 0.003)  # from the preset
    assert (config["hidden_size"], config["seq_len"]) == (8, 16)  # from the flags
    assert config["ema_decay"] == 0.0  # the preset as it was measured
