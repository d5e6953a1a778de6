import json

import pytest

from model.checkpoint import load_checkpoint, save_checkpoint
from training.cli import main
from training.evaluate import evaluate_text


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
    assert first.out.startswith("the ") and len(first.out) == 4 + 30 + 1
    assert first.err == "finished: length\n"
    assert main(argv) == 0
    assert capsys.readouterr().out == first.out
    assert main(["sample", best, "--prime", "the Fox", "--skip-unknown", "--length", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("the Fox") and captured.err.startswith("seed: ")


def test_sample_takes_every_option(trained, capsys):
    best = str(trained / "run" / "best.safetensors")
    base = ["sample", best, "--prime", "the ", "--length", "200", "--seed", "1"]
    assert main([*base, "--logit-bias", "o=-100", "--logit-bias", "e=-100"]) == 0
    text = capsys.readouterr().out[4:]
    assert "o" not in text and "e" not in text and len(text) == 201
    assert main([*base, "--regex", "quick brown", "--stop", "brown"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "the quick \n" and captured.err.endswith("finished: stop\n")
    assert main([*base, "--length", "5", "--logprobs", "2", "--repetition-penalty", "1.3"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.err.splitlines()[:-1]]
    assert "".join(line["char"] for line in lines) == captured.out[4:-1]
    assert all(len(line["top"]) == 2 and line["logprob"] <= 0 for line in lines)


def test_score_equals_eval(trained, capsys, tmp_path):
    best = trained / "run" / "best.safetensors"
    text = (trained / "fox.txt").read_text()[:900] + "QZ"  # two characters it never saw
    path = tmp_path / "text.txt"
    path.write_text(text)
    assert main(["score", str(best), str(path), "--per-char", "--top-n", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    per_char = [json.loads(line) for line in out[:-1]]
    expected = evaluate_text(load_checkpoint(best), text)
    assert len(per_char) == expected.chars + 1 and "bits" not in per_char[0]
    bits = sum(line["bits"] for line in per_char[1:]) / expected.chars
    assert bits == pytest.approx(expected.bits_per_char, abs=1e-4)
    assert f"{expected.bits_per_char:.4f} bits/char" in out[-1]
    assert "2 out of vocabulary" in out[-1]
    assert all(len(line["top"]) == 2 for line in per_char[1:])


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["sample", "{run}/best.safetensors", "--prime", "THE"], ["'T'", "--skip-unknown"]),
        (["sample", "{run}/best.safetensors", "--temperature", "-1"], ["temperature"]),
        (["sample", "{run}/best.safetensors", "--top-p", "2"], ["--top-p"]),
        (["sample", "{run}/best.safetensors", "--logit-bias", "x"], ["CHAR=BIAS"]),
        (["sample", "{run}/best.safetensors", "--logit-bias", "€=1"], ["--logit-bias", "€"]),
        (["sample", "{run}/best.safetensors", "--regex", "(a"], ["--regex", "cannot compile"]),
        (["sample", "{run}/best.safetensors", "--regex", "Q+"], ["--regex", "no text"]),
        (["sample", "{run}/best.safetensors", "--logprobs", "9"], ["--logprobs"]),
        (["sample", "{run}/best.safetensors", "--length", "-1"], ["--length", "≥ 0"]),
        (["sample", "{run}/best.safetensors", *["--stop", "e"] * 5], ["--stop", "at most 4"]),
        (["sample", "{run}/best.safetensors", "--stop", "e" * 33], ["--stop", "1 to 32"]),
        (["sample", "{run}/best.safetensors", "--device", "tpu"], ["unknown device 'tpu'"]),
        (["score", "{run}/best.safetensors", "{tmp}/missing.txt"], ["no such file"]),
        (["score", "{run}/best.safetensors", "{tmp}/fox.txt", "--top-n", "9"], ["--top-n"]),
        (["score", "{run}/best.safetensors", "{run}"], ["is a directory"]),
    ],
)
def test_errors_are_one_line_and_exit_2(trained, capsys, argv, fragments):
    paths = {"tmp": trained, "data": trained / "data", "run": trained / "run"}
    assert main([arg.format(**paths) for arg in argv]) == 2
    _one_error_line(capsys, *fragments)


def test_sample_continues_a_text_from_its_state(trained, tmp_path, capsys):
    """Two turns through --state-out/--state-in write what the whole text as --prime
    writes, and the same state."""
    best = str(trained / "run" / "best.safetensors")
    first, second = tmp_path / "first.state", tmp_path / "second.state"
    turn = ["sample", best, "--length", "30", "--top-k", "5", "--repetition-penalty", "1.2"]
    assert main([*turn, "--prime", "the ", "--seed", "3", "--state-out", str(first)]) == 0
    story = capsys.readouterr().out[:-1]  # "the " and what it wrote
    token = first.read_text()
    assert token.endswith("\n") and len(token.strip()) > 100
    argv = [*turn, "--state-in", str(first), "--prime", " fox", "--seed", "4"]
    assert main([*argv, "--state-out", str(second)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(" fox") and captured.err == "finished: length\n"
    whole = tmp_path / "whole.state"
    prime = story + " fox"
    assert main([*turn, "--prime", prime, "--seed", "4", "--state-out", str(whole)]) == 0
    assert capsys.readouterr().out == prime + captured.out[len(" fox") :]
    assert second.read_text() == whole.read_text()
    # No --prime: the text goes on right after the state's.
    assert main([*turn, "--state-in", str(first), "--seed", "5"]) == 0
    after = capsys.readouterr().out
    assert main([*turn, "--prime", story, "--seed", "5"]) == 0
    assert capsys.readouterr().out == story + after


def test_sample_refuses_a_bad_state_in_one_line(trained, tmp_path, capsys):
    run = trained / "run"
    best = run / "best.safetensors"
    other = load_checkpoint(best)
    other.weights = {name: weight + 0.01 for name, weight in other.weights.items()}
    save_checkpoint(other, tmp_path / "other.safetensors")
    foreign = tmp_path / "foreign.state"
    argv = ["sample", str(tmp_path / "other.safetensors"), "--length", "3", "--seed", "1"]
    assert main([*argv, "--state-out", str(foreign)]) == 0
    capsys.readouterr()
    files = {
        "garbage.state": b"not a state at all!\n",
        "binary.state": bytes(range(128, 256)),
        "short.state": b"AAAA\n",
        "huge.state": b"A" * 100_000,
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    cases = [
        ("missing.state", ["--state-in", "no such file"]),
        ("garbage.state", ["--state-in", "state:", "base64"]),
        ("binary.state", ["--state-in", "state:", "base64"]),
        ("short.state", ["--state-in", "state:", "truncated"]),
        ("huge.state", ["--state-in", "at most"]),
        ("foreign.state", ["--state-in", "state:", "another model"]),
    ]
    for name, fragments in cases:
        assert main(["sample", str(best), "--state-in", str(tmp_path / name)]) == 2, name
        _one_error_line(capsys, *fragments)
    out_cases = [
        (tmp_path / "missing" / "x.state", "no such directory"),
        (tmp_path, "is a directory"),
    ]
    for path, fragment in out_cases:
        assert main(["sample", str(best), "--state-out", str(path)]) == 2
        _one_error_line(capsys, "--state-out", fragment)
