"""app/gate/fairness.py: a decoding step's rows, and prefill, shared fairly between clients."""

import math

import numpy as np
import pytest

from app.gate.fairness import FORGET_AFTER, FairShare, PrimeCredit


def test_similar_clients_all_step():
    rows = np.arange(6)
    fair = FairShare(floor_rows=1)
    assert fair.rows(rows, ["a", "a", "b", "b", "c", None]).tolist() == list(range(6))
    assert fair.rows(rows, ["a"] * 6).tolist() == list(range(6))  # one client: all


def test_a_heavy_client_gets_its_share_in_turn():
    fair = FairShare(floor_rows=8)
    rows = np.arange(9)
    # a: the others' average ceil(3 / 2) = 2, the floor ceil(8 / 3) = 3: a steps 3 of 6
    clients = ["a"] * 6 + ["b", "b", "c"]
    steps = [fair.rows(rows, clients).tolist() for _ in range(4)]
    assert all(step[-3:] == [6, 7, 8] for step in steps)  # b and c step every time
    heavy = [[row for row in step if row < 6] for step in steps]
    assert heavy == [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]]  # a's rows take turns


def test_turns_go_round_all_of_a_clients_rows():
    fair = FairShare(floor_rows=6)
    rows = np.arange(7)
    clients = ["a"] * 4 + ["b", "b", "c"]  # a: max(ceil(6 / 3), ceil(3 / 2)) = 2 of 4
    heavy = [[row for row in fair.rows(rows, clients).tolist() if row < 4] for _ in range(4)]
    assert heavy == [[0, 1], [2, 3], [0, 1], [2, 3]]
    assert sum(row in step for step in heavy for row in range(4)) == 8  # each row twice


def test_one_attacker_against_many_users():
    rows = np.arange(256)
    clients = [f"user{n}" for n in range(64)] + ["attacker"] * 192
    chosen = FairShare(floor_rows=32).rows(rows, clients)
    assert len(chosen) == 64 + 1  # as many as a user holds
    assert set(range(64)) <= set(chosen.tolist())


@pytest.mark.parametrize("held", [2, 128, 10_000])
def test_a_clients_own_rows_do_not_raise_its_share(held: int):
    rows = np.arange(64 + held)
    clients = [f"user{n}" for n in range(64)] + ["attacker"] * held
    assert len(FairShare(floor_rows=32).rows(rows, clients)) == 64 + 1


@pytest.mark.parametrize(("users", "attacker_rows"), [(1, 16), (4, 7), (15, 2), (31, 1)])
def test_as_the_others_leave_a_heavy_share_grows_only_to_the_floor(users: int, attacker_rows: int):
    # The last streams of the other clients keep short steps: ceil(32 / clients) rows of
    # the attacker's, not ceil(all rows / clients) (65 beside one user, 27 beside four).
    rows = np.arange(users + 128)
    clients = [f"user{n}" for n in range(users)] + ["attacker"] * 128
    chosen = FairShare(floor_rows=32).rows(rows, clients).tolist()
    assert chosen[:users] == list(range(users))
    assert len(chosen) == users + attacker_rows == users + math.ceil(32 / (users + 1))


def test_heavy_clients_alone_share_by_the_others_average():
    fair = FairShare(floor_rows=32)
    rows = np.arange(256)
    assert len(fair.rows(rows, ["a"] * 128 + ["b"] * 128)) == 256  # equals: every row
    chosen = fair.rows(np.arange(228), ["a"] * 100 + ["b"] * 128).tolist()
    assert chosen[:100] == list(range(100)) and len(chosen) == 200  # b steps 100 of 128
    # Two attackers beside 64 users: each the average of the others, ceil(192 / 65) = 3.
    clients = [f"user{n}" for n in range(64)] + ["x"] * 128 + ["y"] * 128
    assert len(fair.rows(np.arange(320), clients)) == 64 + 3 + 3


@pytest.mark.parametrize("floor_rows", [0, -1])
def test_fair_share_refuses_a_floor_below_one(floor_rows: int):
    with pytest.raises(ValueError, match="floor_rows"):
        FairShare(floor_rows)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_prime_credit_is_a_burst_then_a_rate_per_client():
    clock = Clock()
    credit = PrimeCredit(burst=100, rate=50.0, clock=clock)
    assert credit.allows("a")
    credit.spend("a", 99)
    assert credit.allows("a")  # 1 left
    credit.spend("a", 16)  # a batched slice runs into debt: 1 - 16 = -15
    assert not credit.allows("a")
    assert credit.allows("b")  # another client's credit is its own
    clock.now += 0.3  # +15: exactly 0, still nothing to spend
    assert not credit.allows("a")
    clock.now += 0.02
    assert credit.allows("a")
    clock.now += 1000  # refilled to the burst, never past it
    credit.spend("a", 100)
    assert not credit.allows("a")


def test_prime_credit_exempts_clientless_jobs_and_rate_zero():
    credit = PrimeCredit(burst=1, rate=1.0, clock=Clock())
    credit.spend(None, 10**6)
    assert credit.allows(None)
    unlimited = PrimeCredit(burst=1, rate=0.0, clock=Clock())
    unlimited.spend("a", 10**6)
    assert unlimited.allows("a")


def test_prime_credit_forgets_clients_whose_credit_is_full_again():
    clock = Clock()
    credit = PrimeCredit(burst=10, rate=10.0, clock=clock)
    for n in range(FORGET_AFTER):
        credit.spend(f"client{n}", 5)
    clock.now += 1  # every one of them is full again
    credit.spend("new", 5)
    assert len(credit._credit) == 1


def test_clients_in_debt_are_not_swept_again_at_every_spend(monkeypatch):
    credit = PrimeCredit(burst=10, rate=0.001, clock=Clock())  # nobody refills
    looks = 0
    real_now = PrimeCredit._now

    def counted(self, client):
        nonlocal looks
        looks += 1
        return real_now(self, client)

    monkeypatch.setattr(PrimeCredit, "_now", counted)
    spends = 3 * FORGET_AFTER
    for n in range(spends):
        credit.spend(f"client{n}", 50)
    assert len(credit._credit) == spends  # all in debt: all remembered
    assert looks < 4 * spends  # a sweep per doubling, not one per spend past FORGET_AFTER


@pytest.mark.parametrize(
    ("burst", "rate"), [(0, 1.0), (-5, 1.0), (10, -1.0), (10, math.inf), (10, math.nan)]
)
def test_prime_credit_refuses_bad_settings(burst, rate):
    with pytest.raises(ValueError, match=r"burst|rate"):
        PrimeCredit(burst, rate)
