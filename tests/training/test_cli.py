import argparse

import pytest

from training.cli import add_prepare_arguments, main, run_prepare
from training.dataset import load_prepared
from training.recipe import TrainConfig

# One batch of the default training shape: what `prepare` checks a corpus holds.
ONE_BATCH = TrainConfig.batch_size * TrainConfig.seq_len + 1


def _one_error_line(capsys, *fragments):
    captured = capsys.readouterr()
    err = captured.err
    assert not captured.out
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def _prepare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return run_prepare(parser.parse_args(argv))


def test_prepare_prints_a_summary(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("abcdefghij" * 10)  # 100 chars: train 90, val 10
    out = tmp_path / "out"
    argv = [str(tmp_path / "t.txt"), "--out", str(out), "--batch-size", "2", "--seq-len", "4"]
    assert _prepare(argv) == 0  # progress bars on, but stderr is no terminal: none shown
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line == f"prepared t.txt: 100 chars, vocab 10 (uint8), train 90, val 10 -> {out}"
    assert captured.err == ""
    assert len(load_prepared(out).train) == 90


def test_prepare_options_reach_the_config(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes("ééééab\n".encode("latin-1") * 10)
    (tmp_path / "src" / "b.md").write_text("ignored")
    argv = [str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--glob", "*.txt"]
    argv += ["--encoding", "latin-1", "--val-fraction", "0.2", "--min-count", "10"]
    argv += ["--max-vocab", "3", "--batch-size", "1", "--seq-len", "1", "--no-progress"]
    assert _prepare(argv) == 0
    assert "70 chars, vocab 3 (uint8, 20 mapped to U+FFFD), train 56, val 14" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            [],
            f"t.txt: too short: 100 characters leave 90 for training, fewer than the {ONE_BATCH:,}",
        ),
        (["--batch-size", "1", "--seq-len", "10"], "validation split"),
        (["--val-fraction", "1.5"], "val_fraction must be between 0 and 1"),
        (["--encoding", "utf-9"], "unknown text encoding 'utf-9'"),
    ],
)
def test_prepare_errors_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    (tmp_path / "t.txt").write_text("x" * 100)
    out = tmp_path / "out"
    assert _prepare([str(tmp_path / "t.txt"), "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_prepare_missing_input(tmp_path, capsys):
    assert _prepare([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "nope: no such file or directory" in capsys.readouterr().err


def test_prepare_bad_numbers_are_usage_errors(tmp_path):
    with pytest.raises(SystemExit):
        _prepare(["t.txt", "--out", str(tmp_path), "--batch-size", "0"])


def test_prepare_document_flags(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("one\ntwo\nthree\n" * 4)
    argv = [str(tmp_path / "t.txt"), "--out", str(tmp_path / "out"), "--no-progress"]
    argv += ["--batch-size", "1", "--seq-len", "1"]
    assert _prepare([*argv, "--doc-per-line"]) == 0
    assert "in 12 documents" in capsys.readouterr().out
    assert load_prepared(tmp_path / "out").meta["documents"] == "line"
    assert _prepare([*argv, "--documents"]) == 0
    assert load_prepared(tmp_path / "out").meta["document_count"] == 1
    with pytest.raises(SystemExit):
        _prepare([*argv, "--documents", "--doc-per-line"])


def test_prepare_turns_crlf_into_lf_unless_told_to_keep_it(tmp_path, capsys):
    (tmp_path / "w.txt").write_bytes(b"one\r\ntwo\rthree\r\n" * 4)
    argv = [str(tmp_path / "w.txt"), "--no-progress", "--batch-size", "1", "--seq-len", "1"]
    assert _prepare([*argv, "--out", str(tmp_path / "lf")]) == 0
    lf = load_prepared(tmp_path / "lf")
    assert "\r" not in lf.vocab and lf.meta["newlines"] == "lf" and lf.meta["source_chars"] == 56
    assert _prepare([*argv, "--out", str(tmp_path / "kept"), "--keep-newlines"]) == 0
    kept = load_prepared(tmp_path / "kept")
    assert "\r" in kept.vocab and kept.meta["newlines"] == "keep"
    assert kept.meta["source_chars"] == 64 and "keep line endings" in _help(capsys)


def _help(capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _prepare(["--help"])
    return capsys.readouterr().out


def test_eval_prints_one_line_per_file_and_a_total(trained, capsys):
    (trained / "other.txt").write_text("the lazy dog!")  # "!" is not in the vocabulary
    best = str(trained / "run" / "best.safetensors")
    assert main(["eval", best, str(trained / "fox.txt"), str(trained / "other.txt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2].startswith("total: ")
    assert lines[0].startswith(f"{trained / 'fox.txt'}: ") and "bits/char" in lines[0]
    assert "perplexity" in lines[0] and "1,799 chars, 0 out of vocabulary" in lines[0]
    assert "11 chars, 1 out of vocabulary" in lines[1]


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["eval", "{run}/best.safetensors", "{tmp}/missing.txt"], ["missing.txt: no such file"]),
        (["eval", "{tmp}/fox.txt", "{tmp}/fox.txt"], ["not a readable safetensors file"]),
        (["prepare", "{tmp}/missing.txt", "--out", "{tmp}/d"], ["no such file"]),
        ([], ["required: COMMAND"]),
    ],
)
def test_errors_are_one_line_and_exit_2(trained, capsys, argv, fragments):
    paths = {"tmp": trained, "data": trained / "data", "run": trained / "run"}
    assert main([arg.format(**paths) for arg in argv]) == 2
    _one_error_line(capsys, *fragments)
