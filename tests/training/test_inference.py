import pytest

from training.cli import main


def _one_error_line(capsys, *fragments):
    captured = capsys.readouterr()
    err = captured.err
    assert not captured.out
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


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
        (["sample", "{run}/best.safetensors", "--prime", "THE"], ["'T'", "--skip-unknown"]),
        (["sample", "{run}/best.safetensors", "--temperature", "0"], ["temperature must be"]),
        (["sample", "{run}/best.safetensors", "--device", "tpu"], ["unknown device 'tpu'"]),
    ],
)
def test_errors_are_one_line_and_exit_2(trained, capsys, argv, fragments):
    paths = {"tmp": trained, "data": trained / "data", "run": trained / "run"}
    assert main([arg.format(**paths) for arg in argv]) == 2
    _one_error_line(capsys, *fragments)
