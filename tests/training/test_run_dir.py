from pathlib import Path

from training.config import TrainConfig
from training.run_dir import EvalRecord, RunDirectory, resume_path


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


def test_resume_path(tmp_path):
    assert resume_path(tmp_path) == tmp_path / "last.safetensors"
    assert resume_path(tmp_path / "x.safetensors") == tmp_path / "x.safetensors"
