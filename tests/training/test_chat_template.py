"""training/chat_template.py: the `chat-template` command and `train --chat-template`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.chat_template import INFO_KEY, PLAY_NAMES, ChatTemplate, play_template
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from training.chat_template import parse_names, unescape
from training.cli import main

PLAY = "ROMEO:\nGood morrow, cousin.\n\nJULIET:\nSweet night, sweet love.\n\nCHORUS:\nAlas.\n\n"


def tiny_checkpoint(path: Path, text: str = PLAY, info: dict | None = None) -> Path:
    vocab = Vocabulary.from_text(text)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=8, num_layers=1))
    save_checkpoint(Checkpoint.from_model(model, vocab, info=info or {"val_loss": 2.5}), path)
    return path


def one_error_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_show_set_and_remove(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path / "m.safetensors")
    before = load_checkpoint(path)
    assert main(["chat-template", str(path)]) == 0
    assert "no chat template (the plain default applies" in capsys.readouterr().out

    assert main(["chat-template", str(path), "--template", "play"]) == 0
    assert "now has this chat template (stop '\\n\\n')" in capsys.readouterr().out
    after = load_checkpoint(path)
    assert ChatTemplate.from_json(after.info[INFO_KEY]) == play_template()
    assert after.info["val_loss"] == 2.5 and after.vocab == before.vocab
    assert all(torch.equal(after.weights[k], w) for k, w in before.weights.items())

    assert main(["chat-template", str(path)]) == 0
    assert '"user": "ROMEO"' in capsys.readouterr().out
    assert main(["chat-template", str(path), "--template", "default"]) == 0
    assert INFO_KEY not in load_checkpoint(path).info


def test_names_and_stops(tmp_path):
    path = tiny_checkpoint(tmp_path / "m.safetensors")
    argv = ["chat-template", str(path), "--template", "play", "--names", "user=CHORUS"]
    assert main([*argv, "--stop", "\\n", "--stop", "."]) == 0
    stored = ChatTemplate.from_json(load_checkpoint(path).info[INFO_KEY])
    assert stored == replace(play_template({"user": "CHORUS"}), stop=("\n", "."))
    talk = [{"role": "user", "content": "Alas."}]
    assert stored.render(talk, 100) == f"CHORUS:\nAlas.\n\n{PLAY_NAMES['assistant']}:\n"


def test_a_template_file(tmp_path):
    path = tiny_checkpoint(tmp_path / "m.safetensors")
    (tmp_path / "t.jinja").write_text(
        "{% for m in messages %}{{ m.content }}\n{% endfor %}ROMEO:{{ '\\n' }}\n",
        encoding="utf-8",
    )
    argv = ["chat-template", str(path), "--template", str(tmp_path / "t.jinja"), "--stop", "\\n"]
    assert main(argv) == 0
    stored = ChatTemplate.from_json(load_checkpoint(path).info[INFO_KEY])
    assert stored.stop == ("\n",)
    assert stored.render([{"role": "user", "content": "Alas."}], 100) == "Alas.\nROMEO:\n"


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--template", "play", "--names", "user=Nobody"], ["does not know", "'N'"]),
        (["--template", "play", "--names", "ghost=X"], ["no role 'ghost'"]),
        (["--template", "play", "--names", "user"], ["not ROLE=NAME"]),
        (["--template", "play", "--names", "user="], ["user name"]),
        (["--template", "default", "--stop", "x"], ["go with --template play or FILE"]),
        (["--names", "user=ROMEO"], ["go with --template play or FILE"]),
        (["--template", "{missing}"], ["cannot read"]),
        (["--template", "{bad}"], ["does not compile: line 1"]),
        (["--template", "{huge}"], ["at most 65,536"]),
        (["--template", "{binary}"], ["not UTF-8"]),
        (["--template", "{refuses}"], ["refused the messages"]),
        (["--template", "play", "--stop", "x" * 33], ["1 to 32"]),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, capsys, extra, fragments):
    path = tiny_checkpoint(tmp_path / "m.safetensors")
    files = {
        "missing": tmp_path / "nope.jinja",
        "bad": tmp_path / "bad.jinja",
        "huge": tmp_path / "huge.jinja",
        "binary": tmp_path / "binary.jinja",
        "refuses": tmp_path / "refuses.jinja",
    }
    files["bad"].write_text("{% for %}")
    files["huge"].write_text("x" * 70_000)
    files["binary"].write_bytes(b"\xff\xfe{{ x }}")
    files["refuses"].write_text("{{ raise_exception('no') }}")
    argv = [arg.format(**files) for arg in extra]
    assert main(["chat-template", str(path), *argv]) == 2
    one_error_line(capsys, *fragments)
    assert INFO_KEY not in load_checkpoint(path).info  # untouched


def test_a_file_that_is_no_checkpoint(tmp_path, capsys):
    (tmp_path / "x.safetensors").write_bytes(b"not a checkpoint at all")
    assert main(["chat-template", str(tmp_path / "x.safetensors"), "--template", "play"]) == 2
    one_error_line(capsys, "x.safetensors")


def test_parse_names_and_unescape():
    assert parse_names(" user = FIRST CITIZEN , assistant=ALL,") == {
        "user": "FIRST CITIZEN",
        "assistant": "ALL",
    }
    assert unescape("a\\nb\\tc\\\\n") == "a\nb\tc\\n"


@pytest.fixture(scope="module")
def play_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("play")
    (root / "play.txt").write_text(PLAY * 30)
    shape = ["--batch-size", "4", "--seq-len", "16", "--no-progress"]
    assert main(["prepare", str(root / "play.txt"), "--out", str(root / "data"), *shape]) == 0
    return root / "data"


TRAIN = ["--batch-size", "4", "--seq-len", "16", "--hidden-size", "8", "--num-layers", "1"]
TRAIN += ["--eval-every", "2", "--threads", "1", "--sample-length", "0", "--no-progress"]


def test_train_writes_the_template_and_a_resumed_run_keeps_it(play_data, tmp_path):
    run = tmp_path / "run"
    argv = ["train", str(play_data), "--out", str(run), "--max-steps", "2", *TRAIN]
    assert main([*argv, "--chat-template", "play", "--chat-names", "user=CHORUS"]) == 0
    expected = play_template({"user": "CHORUS"}).to_json()
    for name in ("best", "last"):
        assert load_checkpoint(run / f"{name}.safetensors").info[INFO_KEY] == expected
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--no-progress"]) == 0
    assert load_checkpoint(run / "last.safetensors").info[INFO_KEY] == expected
    resumed = ["train", "--resume", str(run), "--max-steps", "6", "--no-progress"]
    assert main([*resumed, "--chat-template", "default"]) == 0
    assert INFO_KEY not in load_checkpoint(run / "last.safetensors").info


def test_train_refuses_a_template_the_data_cannot_write_before_training(
    play_data, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = ["train", str(play_data), "--out", str(run), "--max-steps", "2", *TRAIN]
    assert main([*argv, "--chat-template", "play", "--chat-names", "user=Nobody"]) == 2
    one_error_line(capsys, "does not know", "'N'")
    assert not run.exists()
