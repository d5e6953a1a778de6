"""app/fairness.py: a decoding step's rows, and prefill, shared fairly between clients."""

import math

import numpy as np
import pytest

from app.fairness import FORGET_AFTER, FairShare, PrimeCredit


def test_similar_clients_all_step():
    rows = np.arange(6)
    assert FairShare().rows(rows, ["a", "a", "b", "b", "c", None]).tolist() == list(range(6))
    assert FairShare().rows(rows, ["a"] * 6).tolist() == list(range(6))  # one client: all


def test_a_heavy_client_gets_its_share_in_turn():
    fair = FairShare()
    rows = np.arange(7)
    clients = ["a", "a", "a", "a", "b", "b", "c"]  # share: ceil(7 / 3) = 3
    steps = [fair.rows(rows, clients).tolist() for _ in range(4)]
    assert all(step[-3:] == [4, 5, 6] for step in steps)  # b and c step every time
    heavy = [[row for row in step if row < 4] for step in steps]
    assert heavy == [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]  # a's rows take turns
    assert sum(row in step for step in heavy for row in range(4)) == 12


def test_one_attacker_against_many_users():
    rows = np.arange(256)
    clients = [f"user{n}" for n in range(64)] + ["attacker"] * 192
    chosen = FairShare().rows(rows, clients)
    assert len(chosen) == 64 + 4  # share: ceil(256 / 65) = 4
    assert set(range(64)) <= set(chosen.tolist())


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
