import json
import math

import pytest
import torch

from model.checkpoint import load_checkpoint
from training.dataset import load_prepared
from training.evaluate import validation_loss
from training.loop import Trainer, TrainHooks
from training.recipe import TrainConfig

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 80  # what `corpus` prepares


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fox_data):
    return load_prepared(fox_data(tmp_path_factory.mktemp("corpus"), 80))


def _config(tmp_path, run="run", **changes):
    values = {
        "hidden_size": 16,
        "num_layers": 1,
        "dropout": 0.0,
        "batch_size": 4,
        "seq_len": 16,
        "lr": 1e-2,
        "warmup_steps": 2,
        "eval_every": 10,
        "sample_length": 20,
        "sample_prime": "the",
        "threads": 1,
        "max_steps": 20,
    }
    return TrainConfig(tmp_path / "data", tmp_path / run, **(values | changes))


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_few_steps_reduce_the_loss(tmp_path, corpus):
    result = Trainer(_config(tmp_path, max_steps=60, eval_every=20), corpus, progress=False).run()
    records = _metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [20, 40, 60]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["val_loss"] < math.log(len(corpus.vocab)) - 0.5  # well below uniform
    assert result.best_val_loss == min(r["val_loss"] for r in records)
    assert result.stop_reason == "max_steps" and result.step == 60


def test_forget_bias_is_the_initial_forget_gate_bias(tmp_path, corpus):
    trainer = Trainer(_config(tmp_path, forget_bias=1.0), corpus, progress=False)
    _, _, bias_ih, bias_hh = trainer.model.layer_weights(0)
    torch.testing.assert_close(bias_ih[16:32] + bias_hh[16:32], torch.ones(16))  # H = 16
    plain = Trainer(_config(tmp_path, run="plain"), corpus, progress=False)
    _, _, bias_ih, bias_hh = plain.model.layer_weights(0)
    assert not torch.allclose(bias_ih[16:32] + bias_hh[16:32], torch.ones(16))


def test_the_run_evaluates_and_saves_the_weight_average(tmp_path, corpus):
    trainer = Trainer(_config(tmp_path, ema_decay=0.9, max_steps=30), corpus, progress=False)
    trainer.run()
    last = load_checkpoint(tmp_path / "run" / "last.safetensors")
    averaged, raw = trainer.average.model.state_dict(), trainer.model.state_dict()
    saved_raw = last.training_state["weight_average"]["raw_weights"]
    assert last.training_state["weight_average"]["updates"] == 30
    for name in raw:
        assert torch.equal(last.weights[name], averaged[name])  # what is served
        assert torch.equal(saved_raw[name], raw[name])  # what the optimizer continues
    assert not torch.equal(averaged["head.weight"], raw["head.weight"])
    # The reported validation loss is the average's, not the raw weights'.
    reported = _metrics(tmp_path / "run")[-1]["val_loss"]
    assert reported == validation_loss(trainer.average.model, trainer.val_batches)
    assert reported != validation_loss(trainer.model, trainer.val_batches)


def test_without_an_average_the_raw_weights_are_saved(tmp_path, corpus):
    trainer = Trainer(_config(tmp_path, ema_decay=0.0), corpus, progress=False)
    trainer.run()
    assert trainer.average is None
    last = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert "weight_average" not in last.training_state
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(last.weights[name], value)


def test_the_run_directory(tmp_path, corpus):
    config = _config(tmp_path, max_steps=15)  # evaluations at 10 and at the end, 15
    seen = []
    Trainer(config, corpus, progress=False, hooks=TrainHooks(on_evaluation=seen.append)).run()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors",
        "config.json",
        "last.safetensors",
        "loss.png",
        "metrics.jsonl",
    ]
    assert TrainConfig.from_json(json.loads((run / "config.json").read_text())) == config
    records = _metrics(run)
    assert [r["step"] for r in records] == [10, 15] == [r.step for r in seen]
    first = records[0]
    assert first["tokens"] == 10 * 4 * 16 and first["lr"] > 0 and first["chars_per_second"] > 0
    assert first["val_bits_per_char"] == pytest.approx(first["val_loss"] / math.log(2))
    assert first["sample"].startswith("the") and len(first["sample"]) == 23
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best, last = (
        load_checkpoint(run / "best.safetensors"),
        load_checkpoint(run / "last.safetensors"),
    )
    assert best.training_state is None and last.training_state is not None
    assert best.vocab == corpus.vocab and best.config.hidden_size == 16
    info = last.info
    assert info["step"] == 15 and info["tokens"] == 15 * 64 and info["corpus"] == "fox.txt"
    assert info["corpus_chars"] == len(TEXT)
    assert info["train_config"] == config.to_json() | {"data_dir": "../data", "out_dir": "."}
    assert info["val_loss"] == records[-1]["val_loss"] and "torch_version" in info
    assert info["newlines"] == "lf"  # as the data was prepared
    assert last.build_model()(torch.tensor([[0, 1, 2]]))[0].shape == (1, 3, len(corpus.vocab))


def test_max_epochs_and_early_stopping(tmp_path, corpus):
    result = Trainer(_config(tmp_path, max_steps=None, max_epochs=1), corpus, progress=False).run()
    assert result.stop_reason == "max_epochs" and result.epoch == 1.0
    assert result.step == (len(corpus.train) - 1) // 4 // 16

    # A learning rate too small to move float32 weights: the validation loss stays the same,
    # so with patience 2 the run stops at the third evaluation.
    config = _config(tmp_path, run="flat", lr=1e-30, eval_every=2, max_steps=100, patience=2)
    result = Trainer(config, corpus, progress=False).run()
    assert (result.stop_reason, result.step) == ("early_stopping", 6)
    assert len(_metrics(tmp_path / "flat")) == 3


def test_stop_hook_and_time_limit(tmp_path, corpus):
    trainer = Trainer(_config(tmp_path, max_steps=1000), corpus, progress=False)
    trainer.hooks = TrainHooks(should_stop=lambda: trainer.counters.step >= 3)
    result = trainer.run()
    assert (result.stop_reason, result.step, result.last_val_loss) == ("interrupted", 3, None)
    assert load_checkpoint(tmp_path / "run" / "last.safetensors").info["step"] == 3
    assert not (tmp_path / "run" / "metrics.jsonl").read_text()

    config = _config(tmp_path, run="timed", max_steps=None, max_minutes=0.001)
    result = Trainer(config, corpus, progress=False).run()
    assert result.stop_reason == "max_minutes" and result.last_val_loss is not None


def test_refuses_to_start_over_an_existing_run(tmp_path, corpus):
    Trainer(_config(tmp_path, max_steps=1, sample_length=0), corpus, progress=False).run()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(_config(tmp_path, max_steps=1), corpus, progress=False)


def test_global_rng_and_threads_are_left_as_they_were(tmp_path, corpus):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    torch.set_num_threads(2)
    Trainer(
        _config(tmp_path, max_steps=2, threads=1, sample_length=0), corpus, progress=False
    ).run()
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == 2
