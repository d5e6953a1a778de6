import pytest

from app.engine.steps import background_budget, balance


def test_balance_spreads_lanes_over_threads_by_rows():
    assert balance([10, 40, 30, 20], 2) == [[1, 0], [2, 3]]  # 50 rows each
    assert balance([5], 2) == [[0], []]
    assert balance([3, 3, 3], 1) == [[0, 1, 2]]
    groups = balance([64, 1, 1, 1, 1], 2)
    assert sorted(i for group in groups for i in group) == [0, 1, 2, 3, 4]
    assert groups[0] == [0]  # the big lane alone; the small ones share the other thread


@pytest.mark.parametrize(
    ("streaming", "shared", "expected"),
    [(64, False, 0.01 / 3), (64, True, 0.01 / 6), (0, False, 0.05), (0, True, 0.025)],
)
def test_background_budget_is_a_share_of_the_step_or_the_idle_slice(streaming, shared, expected):
    # prefill_share 0.25: background work takes a quarter of the engine's time, so a third
    # of the step's; with no stream decoding, the idle slice.
    budget = background_budget(0.01, streaming, 0.25, 0.05, shared)
    assert budget == pytest.approx(expected)
