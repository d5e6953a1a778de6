from training.batches import BatchPosition
from training.config import TrainConfig
from training.limits import STOP_REASONS, reason_code, reason_from_code, stop_reason
from training.state import RunCounters


def _config(**limits):
    return TrainConfig("data", "run", **limits)


def test_the_first_limit_reached_stops_the_run():
    counters = RunCounters(step=10, position=BatchPosition(epoch=2, batch=0), evals_since_best=3)
    assert stop_reason(_config(max_steps=11), counters, 0.0, False) is None
    assert stop_reason(_config(max_steps=10), counters, 0.0, False) == "max_steps"
    assert stop_reason(_config(max_epochs=2), counters, 0.0, False) == "max_epochs"
    assert stop_reason(_config(max_minutes=1), counters, 60.0, False) == "max_minutes"
    assert stop_reason(_config(max_steps=99, patience=3), counters, 0.0, False) == "early_stopping"
    assert stop_reason(_config(max_steps=99), counters, 0.0, True) == "interrupted"


def test_codes_order_the_reasons_the_ranks_agree_on():
    assert reason_code(None) == 0 and reason_from_code(0) is None
    codes = [reason_code(r) for r in STOP_REASONS]
    assert [reason_from_code(c) for c in codes] == list(STOP_REASONS)
    # A rank out of time or interrupted outweighs the limits every rank reaches together.
    assert max(codes) == reason_code("interrupted")
    assert reason_code("max_minutes") > reason_code("max_steps")
