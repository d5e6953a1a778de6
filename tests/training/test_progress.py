import io

import torch

from model.config import ModelConfig
from model.network import CharRNN
from training.progress import TrainingProgress, format_duration, format_record, start_line
from training.run_dir import EvalRecord

RECORD = EvalRecord(500, 1.623, 32000, 123.4, 1.42131, 1.50123, 2.16581, 2.85e-3, 41234.0, "ab")


def test_evaluation_line():
    assert format_record(RECORD, 3000) == (
        "step 500/3000 | epoch 1.62 | train 1.4213 | val 1.5012 (2.1658 bits/char) | "
        "lr 2.85e-03 | 41.2k chars/s | 2m03s"
    )
    assert format_duration(3725) == "1h02m05s"


def test_no_bar_without_a_terminal_but_the_lines_still_come():
    stream = io.StringIO()
    progress = TrainingProgress(initial=0, total=10, show_bar=True, stream=stream)
    assert not progress.enabled
    progress.advance(2.0, 1000.0)
    progress.evaluated(RECORD, 3000)
    progress.close()
    assert (
        stream.getvalue() == format_record(RECORD, 3000) + "\n--- sample at step 500 ---\nab\n---\n"
    )


def test_start_line():
    model = CharRNN(ModelConfig(10, hidden_size=8, num_layers=1))
    line = start_line(model, torch.device("cpu"), 7, 0, None)
    assert line.startswith("training 0.00M parameters (lstm, fused) on cpu, 7 batches an epoch")
