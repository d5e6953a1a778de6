import dataclasses

import numpy as np
import pytest

from model.decoding.output import (
    CHOSEN,
    ID,
    ROW_WIDTH,
    TOP_IDS,
    TOP_LOGPROBS,
    CharLogprob,
    LogprobBuffer,
    Logprobs,
    RowOutput,
)


def logprob_row(char_id, chosen, top_ids, top):
    """A LogprobBuffer record, as the sampler lays one out."""
    row = np.zeros(ROW_WIDTH)
    row[ID], row[CHOSEN] = char_id, chosen
    row[TOP_IDS : TOP_IDS + len(top_ids)] = top_ids
    row[TOP_LOGPROBS : TOP_LOGPROBS + len(top)] = top
    return row.tobytes()


def test_held_characters_are_released_once_they_cannot_start_a_stop():
    output = RowOutput()
    released = []
    for char, held in [(1, 0), (2, 1), (3, 2), (4, 1), (5, 0)]:
        output.extend([char], held)
        released.append(output.released)
    assert released == [1, 1, 1, 3, 5] and output.ids == [1, 2, 3, 4, 5]
    assert output.finish_reason is None and len(output.logprobs) == 0


def test_released_never_moves_back():
    output = RowOutput()
    output.extend([1], 0)
    output.extend([2], 2)  # a hold-back longer than what is new: nothing shown is taken back
    assert output.released == 1


def test_a_finished_stop_is_never_released():
    output = RowOutput()
    for char, held in [(1, 0), (7, 1), (8, 2)]:
        output.extend([char], held)
    output.finish("stop", stop_length=2)
    assert output.released == 1 and output.finish_reason == "stop"


@pytest.mark.parametrize("reason", ["length", "regex"])
def test_other_ends_release_everything(reason):
    output = RowOutput()
    output.extend([1], 0)
    output.extend([2], 1)
    output.finish(reason)
    assert output.released == 2 and output.finish_reason == reason


def test_logprobs_are_kept_as_columns():
    output = RowOutput()
    output.logprobs.append(logprob_row(3, -0.5, [3, 1], [-0.5, -1.5]))
    output.extend([3], 0)
    output.logprobs.append(logprob_row(4, -2.0, [3, 1], [-0.4, -1.2]))
    output.extend([4], 0)
    both = output.logprobs.read(2)
    assert both.ids.tolist() == [3, 4] and both.chosen.tolist() == [-0.5, -2.0]
    assert both.ids.dtype == np.int64 and both.top_ids.dtype == np.int64
    assert len(output.prompt_logprobs) == 0 and output.regex_complete is None
    first = output.logprobs.slice(0, 1, 2)
    assert first.top_ids.tolist() == [[3, 1]] and first.top_logprobs.tolist() == [[-0.5, -1.5]]
    assert first.entries() == [CharLogprob(3, -0.5, ((3, -0.5), (1, -1.5)))]
    assert output.logprobs.slice(0, 1, 1).top_ids.tolist() == [[3]]  # fewer alternatives
    assert output.logprobs.slice(0, 1, 0).top_ids.shape == (1, 0)
    assert len(output.logprobs.slice(1, 5, 2)) == 1 and len(output.logprobs.slice(2, 2, 2)) == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.entries()[0].logprob = 0.0


def test_a_logprob_buffer_grows_without_changing_what_was_read():
    buffer = LogprobBuffer()
    for char in range(5):
        buffer.append(logprob_row(char, -float(char), [char], [-1.0 - char]))
    early = buffer.slice(0, 2, 1)  # read before it grows again: a copy, not a view
    for char in range(5, 40):
        buffer.append(logprob_row(char, -float(char), [char], [-1.0 - char]))
    everything = buffer.read(1)
    assert len(buffer) == 40 and everything.ids.tolist() == list(range(40))
    assert everything.top_logprobs[:, 0].tolist() == [-1.0 - c for c in range(40)]
    assert early.ids.tolist() == [0, 1] and early.chosen.tolist() == [0.0, -1.0]


def test_an_empty_read_out_has_the_asked_width():
    empty = Logprobs.empty(3)
    assert len(empty) == 0 and empty.top_ids.shape == (0, 3) and empty.entries() == []
    assert len(LogprobBuffer().read(5)) == 0
