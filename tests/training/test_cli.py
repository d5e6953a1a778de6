import json

import pytest

from training.__main__ import main

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40  # 1,800 characters
SMALL = [
    "--hidden-size",
    "16",
    "--num-layers",
    "1",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--threads",
    "1",
    "--no-progress",
    "--sample-length",
    "10",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A text file, its prepared data and a run trained on it, all through main()."""
    root = tmp_path_factory.mktemp("cli")
    (root / "fox.txt").write_text(TEXT)
    prepare = [
        "prepare",
        str(root / "fox.txt"),
        "--out",
        str(root / "data"),
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--no-progress",
    ]
    assert main(prepare) == 0
    train = [
        "train",
        str(root / "data"),
        "--out",
        str(root / "run"),
        "--max-steps",
        "12",
        "--eval-every",
        "6",
        "--lr",
        "0.01",
        "--betas",
        "0.9",
        "0.95",
        *SMALL,
    ]
    assert main(train) == 0
    return root


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


def test_eval_prints_one_line_per_file_and_a_total(trained, capsys):
    (trained / "other.txt").write_text("the lazy dog!")  # "!" is not in the vocabulary
    best = str(trained / "run" / "best.safetensors")
    assert main(["eval", best, str(trained / "fox.txt"), str(trained / "other.txt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2].startswith("total: ")
    assert lines[0].startswith(f"{trained / 'fox.txt'}: ") and "bits/char" in lines[0]
    assert "perplexity" in lines[0] and "1,799 chars, 0 out of vocabulary" in lines[0]
    assert "11 chars, 1 out of vocabulary" in lines[1]


def test_sample_streams_repeatable_text(trained, capsys):
    best = str(trained / "run" / "best.safetensors")
    argv = ["sample", best, "--prime", "the ", "--length", "30", "--seed", "3", "--top-k", "5"]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert first.out.startswith("the ") and len(first.out) == 4 + 30 + 1 and not first.err
    assert main(argv) == 0
    assert capsys.readouterr().out == first.out
    assert main(["sample", best, "--prime", "the Fox", "--skip-unknown", "--length", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("the Fox") and captured.err.startswith("seed: ")


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
        (["eval", "{run}/best.safetensors", "{tmp}/missing.txt"], ["missing.txt: no such file"]),
        (["eval", "{tmp}/fox.txt", "{tmp}/fox.txt"], ["not a readable safetensors file"]),
        (["sample", "{run}/best.safetensors", "--prime", "THE"], ["'T'", "--skip-unknown"]),
        (["sample", "{run}/best.safetensors", "--temperature", "0"], ["temperature must be"]),
        (["sample", "{run}/best.safetensors", "--device", "tpu"], ["unknown device 'tpu'"]),
        (["prepare", "{tmp}/missing.txt", "--out", "{tmp}/d"], ["no such file"]),
        ([], ["required: COMMAND"]),
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
