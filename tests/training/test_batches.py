import numpy as np
import pytest
import torch

from training.batches import BatchPosition, ColumnBatches, validation_batches


def _rows(batches):
    """Each row's inputs over all windows, concatenated: (B, total T)."""
    return torch.cat([batches.window(k)[0] for k in range(len(batches))], dim=1)


def test_the_docstring_diagram():
    ids = np.arange(25, dtype=np.uint8)  # a..y
    batches = ColumnBatches(ids, batch_size=3, seq_len=4)
    assert (batches.column_len, len(batches)) == (8, 2)
    inputs, targets = batches.window(0)
    assert inputs.tolist() == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]
    assert targets.tolist() == [[1, 2, 3, 4], [9, 10, 11, 12], [17, 18, 19, 20]]
    inputs, targets = batches.window(1)
    assert inputs.tolist() == [[4, 5, 6, 7], [12, 13, 14, 15], [20, 21, 22, 23]]
    assert targets[:, -1].tolist() == [8, 16, 24]  # a column's last target starts the next
    assert inputs.dtype == targets.dtype == torch.int64


def test_rows_continue_across_batches_and_targets_are_shifted():
    ids = np.arange(1000, dtype=np.uint16)
    batches = ColumnBatches(ids, batch_size=7, seq_len=10)
    for k in range(len(batches)):
        inputs, targets = batches.window(k)
        assert torch.equal(targets, inputs + 1)
        if k:
            previous, _ = batches.window(k - 1)
            assert torch.equal(inputs[:, 0], previous[:, -1] + 1)  # row b goes on exactly
    rows = _rows(batches)
    starts = rows[:, :1]
    assert torch.equal(rows, starts + torch.arange(rows.shape[1]))
    assert starts.flatten().tolist() == [b * batches.column_len for b in range(7)]


def test_every_id_but_the_first_is_a_target_once_without_drop_last():
    ids = np.arange(1 + 4 * 23, dtype=np.int32)
    batches = ColumnBatches(ids, batch_size=4, seq_len=5, drop_last=False)
    assert len(batches) == 5 and batches.window(4)[0].shape == (4, 3)  # short last window
    targets = torch.cat([batches.window(k)[1] for k in range(len(batches))], dim=1)
    assert sorted(targets.flatten().tolist()) == list(range(1, len(ids)))
    assert batches.predictions == len(ids) - 1
    dropped = ColumnBatches(ids, batch_size=4, seq_len=5)
    assert len(dropped) == 4 and dropped.predictions == 4 * 20


def test_reads_a_read_only_memmap(tmp_path):
    path = tmp_path / "ids.bin"
    np.arange(300, dtype=np.uint16).tofile(path)
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    batches = ColumnBatches(ids, batch_size=2, seq_len=8)
    inputs, _ = batches.window(3)
    assert inputs.tolist() == [list(range(24, 32)), list(range(173, 181))]


def test_too_few_ids_and_bad_indices():
    with pytest.raises(ValueError, match="one batch needs 41"):
        ColumnBatches(np.arange(40), batch_size=4, seq_len=10)
    assert len(ColumnBatches(np.arange(41), batch_size=4, seq_len=10)) == 1
    with pytest.raises(IndexError):
        ColumnBatches(np.arange(41), batch_size=4, seq_len=10).window(1)
    with pytest.raises(ValueError, match="too few: at least 2"):
        validation_batches(np.arange(1), batch_size=4, seq_len=10)


def test_validation_uses_fewer_columns_when_small():
    assert validation_batches(np.arange(31), batch_size=64, seq_len=10).batch_size == 3
    assert validation_batches(np.arange(5), batch_size=64, seq_len=10).batch_size == 1
    big = validation_batches(np.arange(10_000), batch_size=8, seq_len=10)
    assert big.batch_size == 8 and big.predictions == 8 * ((10_000 - 1) // 8)


def test_position_advances_rolls_over_and_round_trips():
    position = BatchPosition()
    for _ in range(5):
        position = position.advance(num_batches=3)
    assert position == BatchPosition(epoch=1, batch=2)
    assert position.fraction(3) == pytest.approx(1 + 2 / 3)
    assert position.advance(3) == BatchPosition(2, 0)
    assert BatchPosition.from_json(position.to_json()) == position
    with pytest.raises(ValueError):
        BatchPosition(-1, 0)


def test_columns_are_a_share_of_the_same_layout():
    ids = np.arange(41, dtype=np.uint16)
    whole = ColumnBatches(ids, batch_size=4, seq_len=3)
    part = whole.columns(slice(2, 4))
    assert (len(part), part.batch_size) == (len(whole), 2)
    for k in range(len(whole)):
        inputs, targets = whole.window(k)
        part_inputs, part_targets = part.window(k)
        assert torch.equal(part_inputs, inputs[2:4]) and torch.equal(part_targets, targets[2:4])
    assert part.predictions * 2 == whole.predictions
    assert whole.columns(slice(1, 1)).batch_size == 0


def test_a_memory_mapped_file_reads_the_same_windows(tmp_path):
    ids = np.random.default_rng(0).integers(0, 300, size=1001).astype("<u2")
    path = tmp_path / "ids.bin"
    path.write_bytes(b"\0" * 6 + ids.tobytes())  # ids from byte 6, as a header would put them
    mapped = np.memmap(path, dtype="<u2", mode="r", offset=6, shape=(1001,))
    in_memory, from_file = ColumnBatches(ids, 8, 10), ColumnBatches(mapped, 8, 10)
    assert from_file._file is not None  # the pread path
    for whole, read in (
        (in_memory, from_file),
        (in_memory.columns(slice(3, 6)), from_file.columns(slice(3, 6))),
    ):
        for k in range(len(whole)):
            assert all(
                torch.equal(a, b) for a, b in zip(whole.window(k), read.window(k), strict=True)
            )
