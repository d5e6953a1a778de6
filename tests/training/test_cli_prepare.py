import argparse

import pytest

from training.cli_prepare import add_prepare_arguments, run_prepare
from training.data import load_prepared


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    return run_prepare(parser.parse_args(argv))


def test_prepare_prints_a_summary(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("abcdefghij" * 10)  # 100 chars: train 90, val 10
    out = tmp_path / "out"
    argv = [str(tmp_path / "t.txt"), "--out", str(out), "--batch-size", "2", "--seq-len", "4"]
    assert _run(argv) == 0  # progress bars on, but stderr is no terminal: none shown
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line == f"prepared t.txt: 100 chars, vocab 10 (uint8), train 90, val 10 -> {out}"
    assert captured.err == ""
    assert len(load_prepared(out).train) == 90


def test_options_reach_the_config(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes("ééééab\n".encode("latin-1") * 10)
    (tmp_path / "src" / "b.md").write_text("ignored")
    argv = [str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--glob", "*.txt"]
    argv += ["--encoding", "latin-1", "--val-fraction", "0.2", "--min-count", "10"]
    argv += ["--max-vocab", "3", "--batch-size", "1", "--seq-len", "1", "--no-progress"]
    assert _run(argv) == 0
    assert "70 chars, vocab 3 (uint8, 20 mapped to U+FFFD), train 56, val 14" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "t.txt: too short: 100 characters leave 90 for training, fewer than the 8,193"),
        (["--batch-size", "1", "--seq-len", "10"], "validation split"),
        (["--val-fraction", "1.5"], "val_fraction must be between 0 and 1"),
        (["--encoding", "utf-9"], "unknown text encoding 'utf-9'"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    (tmp_path / "t.txt").write_text("x" * 100)
    out = tmp_path / "out"
    assert _run([str(tmp_path / "t.txt"), "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_input(tmp_path, capsys):
    assert _run([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "nope: no such file or directory" in capsys.readouterr().err


def test_bad_numbers_are_usage_errors(tmp_path):
    with pytest.raises(SystemExit):
        _run(["t.txt", "--out", str(tmp_path), "--batch-size", "0"])


def test_document_flags(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("one\ntwo\nthree\n" * 4)
    argv = [str(tmp_path / "t.txt"), "--out", str(tmp_path / "out"), "--no-progress"]
    argv += ["--batch-size", "1", "--seq-len", "1"]
    assert _run([*argv, "--doc-per-line"]) == 0
    assert "in 12 documents" in capsys.readouterr().out
    assert load_prepared(tmp_path / "out").meta["documents"] == "line"
    assert _run([*argv, "--documents"]) == 0
    assert load_prepared(tmp_path / "out").meta["document_count"] == 1
    with pytest.raises(SystemExit):
        _run([*argv, "--documents", "--doc-per-line"])
