"""app/fairness.py: a decoding step's rows shared fairly between clients."""

import numpy as np

from app.fairness import FairShare


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
