import json
import pickle
import random
import re

import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import CharRNN
from model.vocab import Vocabulary
from training.cli import main
from training.dataset import load_prepared
from training.finetune import (
    NEW_CHAR_BIAS,
    fine_tune_config,
    fine_tune_weights,
    load_init,
    merge_vocabularies,
)
from training.loop import Trainer, TrainHooks
from training.prepare import PrepareConfig, prepare
from training.recipe import TrainConfig, preset

# The base model knows "." and a lower-case "t", which the new text lacks; the new text
# brings "T", "Q", "2" and "!".
BASE_VOCAB = Vocabulary(tuple("\n .abcdefghijklmnopqrstuvwxyz"))
NEW_TEXT = "The Quick brown fox jumps over 2 lazy dogs!\n" * 60  # 2,640 characters


def _base(cell="lstm", layers=2, seed=0):
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(len(BASE_VOCAB), 16, layers, 0.25, cell))
    return Checkpoint.from_model(model, BASE_VOCAB, {"corpus": "base"})


@pytest.fixture(scope="module")
def new_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    (root / "new.txt").write_text(NEW_TEXT)
    config = PrepareConfig(min_chars=1, min_val_chars=1)
    prepare([str(root / "new.txt")], root / "data", config, progress=False)
    save_checkpoint(_base(), root / "base.safetensors")
    return root


def _config(root, run, **settings):
    values = {"batch_size": 4, "seq_len": 16, "max_steps": 6, "eval_every": 3, "threads": 1}
    values |= {"sample_length": 0, "warmup_steps": 2}
    path = root / "base.safetensors"
    return fine_tune_config(
        load_checkpoint(path), path, root / "data", root / run, **values | settings
    )


def test_the_merged_vocabulary_keeps_known_ids_and_old_characters():
    data = Vocabulary.from_text("abc!\n")
    merged, id_map = merge_vocabularies(BASE_VOCAB, data)
    assert merged.chars == (*BASE_VOCAB.chars, "!")  # old ids, then the new character
    assert "z" in merged  # the base's characters the data lacks stay
    text = "a!b\nc"
    assert merged.decode(id_map[data.encode(text)].tolist()) == text  # ids mapped, not reread
    assert merge_vocabularies(data, data) == (data, None)  # a model of the data's vocabulary


def test_the_merge_takes_the_unknown_symbol_and_separator_it_lacks():
    data = Vocabulary(tuple("ab\ufffd\u241e"), unknown="\ufffd", separator="\u241e")
    merged, _ = merge_vocabularies(BASE_VOCAB, data)
    assert (merged.unknown, merged.separator) == ("\ufffd", "\u241e")
    clash = Vocabulary(tuple("ab\u241e"), unknown="\u241e")
    with pytest.raises(ValueError, match="separator cannot also be the unknown"):
        merge_vocabularies(clash, data)


@pytest.mark.parametrize(("cell", "impl"), [("lstm", "fused"), ("lstm", "torch"), ("gru", "torch")])
def test_old_characters_predictions_are_unchanged_at_step_0(cell, impl):
    base = _base(cell)
    merged = merge_vocabularies(BASE_VOCAB, Vocabulary.from_text("ABC!0123 abc"))[0]
    old, grown = (
        base.build_model(),
        Checkpoint(
            ModelConfig(len(merged), 16, 2, 0.25, cell), merged, fine_tune_weights(base, merged)
        ).build_model(),
    )
    old.impl = grown.impl = impl
    ids = torch.randint(0, len(BASE_VOCAB), (3, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = F.log_softmax(old(ids)[0], dim=-1)  # (3, 50, V)
        after = F.log_softmax(grown(ids)[0], dim=-1)  # (3, 50, V + new)
    torch.testing.assert_close(after[..., : len(BASE_VOCAB)], before, rtol=0, atol=1e-6)
    assert after[..., len(BASE_VOCAB) :].exp().max() < 1e-11  # the new ones: e^-30


def test_new_entries_are_zero_but_the_output_bias():
    base = _base()
    merged = merge_vocabularies(BASE_VOCAB, Vocabulary.from_text("AB"))[0]
    weights = fine_tune_weights(base, merged)
    old = len(BASE_VOCAB)
    assert weights["rnn.weight_ih_l0"].shape == (64, old + 2)
    assert torch.equal(weights["rnn.weight_ih_l0"][:, :old], base.weights["rnn.weight_ih_l0"])
    assert not weights["rnn.weight_ih_l0"][:, old:].any() and not weights["head.weight"][old:].any()
    assert weights["head.bias"][old:].tolist() == [NEW_CHAR_BIAS] * 2
    assert torch.equal(weights["rnn.weight_hh_l1"], base.weights["rnn.weight_hh_l1"])
    with pytest.raises(ValueError, match="start with the checkpoint's characters"):
        fine_tune_weights(base, Vocabulary(tuple(reversed(merged.chars))))


def test_the_network_comes_from_the_checkpoint(new_data):
    config = _config(new_data, "r", dropout=0.0)
    assert (config.hidden_size, config.num_layers, config.cell, config.dropout) == (
        16,
        2,
        "lstm",
        0.0,
    )
    assert _config(new_data, "r", hidden_size=16).hidden_size == 16  # the same: no change
    with pytest.raises(ValueError, match=r"^hidden_size, cell: a fine-tuned run keeps"):
        _config(new_data, "r", hidden_size=32, cell="gru")
    with pytest.raises(ValueError, match="forget_bias initialises fresh weights"):
        _config(new_data, "r", forget_bias=1.0)
    with pytest.raises(ValueError, match=r"base\.safetensors has num_layers 2, the run asks for 1"):
        load_init(_config(new_data, "r").with_changes(num_layers=1))


def test_a_fine_tuned_run_starts_from_the_checkpoint_and_learns(new_data):
    config = _config(new_data, "run", max_steps=12, eval_every=4)
    corpus = load_prepared(new_data / "data")
    trainer = Trainer(config, corpus, progress=False)
    base = _base()
    start = fine_tune_weights(base, trainer.vocab)
    assert all(torch.equal(trainer.model.state_dict()[k], start[k]) for k in start)
    result = trainer.run()
    last = load_checkpoint(new_data / "run" / "last.safetensors")
    assert last.vocab.chars[: len(BASE_VOCAB)] == BASE_VOCAB.chars  # ids kept, "." too
    assert set(last.vocab.chars[len(BASE_VOCAB) :]) == set("TQ2!")
    records = [json.loads(line) for line in (new_data / "run" / "metrics.jsonl").open()]
    assert records[-1]["val_loss"] < records[0]["val_loss"] and result.step == 12
    info = last.info["train_config"]
    paths = info["init_from"], info["data_dir"], info["out_dir"]
    assert paths == ("../base.safetensors", "../data", ".")
    saved = json.loads((new_data / "run" / "config.json").read_text())
    assert saved["init_from"] == str(new_data / "base.safetensors")
    # The fine-tuned model samples and scores its new characters.
    model = last.build_model()
    ids = torch.tensor([last.vocab.encode("The Q!")])
    assert model(ids)[0].shape == (1, 6, len(last.vocab))


def test_stop_and_resume_of_a_fine_tuned_run_equals_one_run(new_data):
    corpus = load_prepared(new_data / "data")
    whole = Trainer(_config(new_data, "whole", max_steps=8), corpus, progress=False).run()
    config = _config(new_data, "split", max_steps=8)
    first = Trainer(config, corpus, progress=False)
    first.hooks = TrainHooks(should_stop=lambda: first.counters.step >= 5)
    assert first.run().stop_reason == "interrupted"
    # Resumed through the command line: the data and the checkpoint found from the run.
    assert main(["train", "--resume", str(new_data / "split"), "--no-progress"]) == 0
    a = load_checkpoint(new_data / "whole" / "last.safetensors")
    b = load_checkpoint(new_data / "split" / "last.safetensors")
    assert a.vocab == b.vocab and b.info["step"] == whole.step == 8
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_the_command_line_fine_tunes_with_the_preset(new_data, capsys):
    argv = ["train", str(new_data / "data"), "--out", str(new_data / "cli"), "--no-progress"]
    argv += ["--init-from", str(new_data / "base.safetensors"), "--max-steps", "2"]
    argv += ["--batch-size", "4", "--seq-len", "16", "--sample-length", "0", "--lr", "1e-3"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("done (max steps): step 2")
    config = json.loads((new_data / "cli" / "config.json").read_text())
    assert config["lr"] == 1e-3  # the flag
    assert config["warmup_steps"] == preset("fine-tune")["warmup_steps"]  # the preset
    assert config["dropout"] == preset("fine-tune")["dropout"] != 0.25  # the preset's
    assert config["hidden_size"] == 16  # the checkpoint's


def test_without_a_dropout_setting_the_checkpoints_is_kept(new_data):
    assert _config(new_data, "r").dropout == 0.25  # the base checkpoint's


def _one_error_line(capsys, *fragments):
    captured = capsys.readouterr()
    assert not captured.out
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    for fragment in fragments:
        assert fragment in captured.err, captured.err


@pytest.mark.parametrize(
    ("setup", "extra", "fragments"),
    [
        (None, ["--hidden-size", "32"], ["hidden_size: a fine-tuned run keeps", "hidden_size 16"]),
        (None, ["--cell", "gru"], ["cell: a fine-tuned run keeps"]),
        (None, ["--forget-bias", "1"], ["forget_bias initialises fresh weights"]),
        (None, ["--resume", "{root}/cli"], ["--init-from starts a new run"]),
        ("missing", [], ["checkpoint not found"]),
        ("garbage", [], ["not a readable safetensors file"]),
        ("truncated", [], ["not a readable safetensors file"]),
        ("pickle", [], ["pickle"]),
        ("directory", [], ["checkpoint not found"]),
    ],
)
def test_bad_init_from_is_one_line_and_exit_2(new_data, tmp_path, capsys, setup, extra, fragments):
    init = new_data / "base.safetensors"
    if setup is not None:
        init = tmp_path / "init.safetensors"
        if setup == "garbage":
            init.write_bytes(b"\x00" * 64)
        elif setup == "truncated":
            init.write_bytes((new_data / "base.safetensors").read_bytes()[:500])
        elif setup == "pickle":
            init.write_bytes(pickle.dumps({"weights": [1, 2]}))
        elif setup == "directory":
            init = tmp_path
    argv = ["train", str(new_data / "data"), "--out", str(tmp_path / "r"), "--max-steps", "1"]
    argv += ["--init-from", str(init), *[a.format(root=new_data) for a in extra]]
    assert main(argv) == 2
    _one_error_line(capsys, *fragments)
    assert not (tmp_path / "r").exists()


def test_data_without_new_characters_maps_onto_the_model_vocabulary():
    data = Vocabulary.from_text("ab z")
    merged, id_map = merge_vocabularies(BASE_VOCAB, data)
    assert merged == BASE_VOCAB  # what a resumed fine-tuned run checks
    assert merged.decode(id_map[data.encode("za b")].tolist()) == "za b"


# Early stopping under the fine-tune preset. Letters drawn uniformly at random: past their
# frequencies there is nothing to learn, so whatever more the model takes from the training
# split is the text by heart, and the validation loss climbs.
NOISE_VOCAB = Vocabulary(tuple("\n abcdefgh"))
MAX_STEPS = 140  # 10 passes: more than the ~6 after which the run below stops by itself


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    rng = random.Random(0)
    text = "".join(rng.choice(NOISE_VOCAB.chars[1:]) for _ in range(1_000)) + "\n"
    (root / "noise.txt").write_text(text)
    config = PrepareConfig(min_chars=1, min_val_chars=1)
    prepare([str(root / "noise.txt")], root / "data", config, progress=False)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(NOISE_VOCAB), 64, 1, 0.0, "lstm"))
    save_checkpoint(Checkpoint.from_model(model, NOISE_VOCAB, {}), root / "base.safetensors")
    return root


def _fine_tune(root, run, *flags):
    """`train --init-from` on the noise with the fine-tune preset and `flags`: 900 training
    characters, 14 batches of 4 × 16 a pass."""
    argv = ["train", str(root / "data"), "--out", str(root / run), "--no-progress"]
    argv += ["--init-from", str(root / "base.safetensors"), "--max-steps", str(MAX_STEPS)]
    return main([*argv, "--batch-size", "4", "--seq-len", "16", "--sample-length", "0", *flags])


def test_a_fine_tune_that_learns_a_small_text_by_heart_stops_and_names_best(noise, capsys):
    assert _fine_tune(noise, "early") == 0
    out = capsys.readouterr().out
    run = noise / "early"
    line = out.strip()
    assert out.count("\n") == 1 and line.startswith("done (early stopping): step ")
    assert line.endswith(f"; serve {run / 'best.safetensors'}")
    patience = preset("fine-tune")["patience"]
    assert f", none better in the {patience} evaluations since;" in line
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["val_loss"])
    step = int(re.search(r"at step (\d+),", line).group(1))
    assert step == best["step"] < records[-1]["step"] < MAX_STEPS
    # Two evaluations a pass of 14 batches (every 7 steps); the run stopped at the 4th
    # evaluation after the best, all of them worse.
    assert [r["step"] for r in records] == list(range(7, records[-1]["step"] + 1, 7))
    after = [r["val_loss"] for r in records if r["step"] > step]
    assert len(after) == patience and min(after) > best["val_loss"]
    # best.safetensors holds the best evaluation's weights; last.safetensors the last ones,
    # worse, kept for --resume.
    served = load_checkpoint(run / "best.safetensors")
    last = load_checkpoint(run / "last.safetensors")
    assert (served.info["step"], served.info["val_loss"]) == (step, best["val_loss"])
    assert last.info["val_loss"] == records[-1]["val_loss"] > served.info["val_loss"]


@pytest.mark.parametrize(
    ("flags", "stop", "evaluated_every", "patience"),
    [
        (["--patience", "none"], "max steps", 7, None),  # no early stopping: to the limit
        (["--patience", "off", "--max-steps", "21"], "max steps", 7, None),
        (["--evals-per-epoch", "none", "--eval-every", "10"], "early stopping", 10, 4),
        (["--eval-every", "5"], "early stopping", 5, 4),  # sooner than twice a pass
        (["--patience", "1", "--evals-per-epoch", "1"], "early stopping", 14, 1),
    ],
)
def test_flags_given_override_the_preset_s_stopping(
    noise, capsys, flags, stop, evaluated_every, patience
):
    run = noise / f"flags-{'_'.join(flags)}"
    assert _fine_tune(noise, run.name, *flags) == 0
    assert capsys.readouterr().out.startswith(f"done ({stop}): step ")
    config = json.loads((run / "config.json").read_text())
    assert config["patience"] == patience
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps[:3] == [evaluated_every, 2 * evaluated_every, 3 * evaluated_every]
    if stop == "max steps":
        assert steps[-1] == config["max_steps"]


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--patience", "0"], "patience must be an integer ≥ 1, got 0"),
        (["--patience", "-2"], "patience must be an integer ≥ 1, got -2"),
        (["--patience", "nan"], "invalid int value: 'nan'"),
        (["--patience", "2.5"], "invalid int value: '2.5'"),
        (["--evals-per-epoch", "0"], "evals_per_epoch must be an integer ≥ 1, got 0"),
        (["--evals-per-epoch", "-1"], "evals_per_epoch must be an integer ≥ 1, got -1"),
        (["--evals-per-epoch", "inf"], "invalid int value: 'inf'"),
    ],
)
def test_a_bad_stopping_flag_is_one_line_and_exit_2(noise, tmp_path, capsys, flags, fragment):
    argv = ["train", str(noise / "data"), "--out", str(tmp_path / "r"), "--max-steps", "1"]
    assert main([*argv, "--init-from", str(noise / "base.safetensors"), *flags]) == 2
    _one_error_line(capsys, fragment)
    assert not (tmp_path / "r").exists()


def test_an_early_stopping_run_interrupted_and_resumed_equals_one_run(noise, capsys):
    assert _fine_tune(noise, "whole") == 0
    whole = capsys.readouterr().out
    corpus = load_prepared(noise / "data")
    config = json.loads((noise / "whole" / "config.json").read_text())
    config["out_dir"] = str(noise / "split")
    first = Trainer(TrainConfig.from_json(config), corpus, progress=False)
    first.hooks = TrainHooks(should_stop=lambda: first.counters.step >= 30)  # mid-way
    assert first.run().stop_reason == "interrupted"
    assert main(["train", "--resume", str(noise / "split"), "--no-progress"]) == 0
    resumed = capsys.readouterr().out
    assert resumed.replace("split", "whole") == whole  # same stop, step, best and line
    for name in ("best.safetensors", "last.safetensors"):
        a, b = (load_checkpoint(noise / run / name) for run in ("whole", "split"))
        assert a.info["step"] == b.info["step"]
        assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
