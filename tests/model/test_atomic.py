import threading

import numpy as np
from numba import njit

from model.atomic import take


@njit(nogil=True)
def take_all(counter, limit, taken):
    """Take 1 at a time until `limit`, with some work between; → how many this thread took
    (their values in taken) and the work's sum (returned so that it is not optimised away)."""
    count = 0
    work = 0.0
    while True:
        value = take(counter, 1)
        if value >= limit:
            return count, work
        taken[count] = value
        count += 1
        for i in range(200):  # a piece's work: the threads' takes interleave
            work += i * 1e-9


def test_take_adds_and_returns_the_value_before():
    counter = np.zeros(1, np.int64)

    @njit
    def three_takes(counter):
        return take(counter, 8), take(counter, 8), take(counter, 3)

    assert three_takes(counter) == (0, 8, 16)
    assert counter[0] == 19


def test_threads_taking_from_one_counter_never_get_the_same_value():
    """4 threads at once, GIL released: every value is taken by exactly one of them (a
    load-add-store that is not one atomic step hands some values out twice)."""
    limit, threads = 200_000, 4
    counter = np.zeros(1, np.int64)
    taken = [np.full(limit, -1, np.int64) for _ in range(threads)]
    counts = [0] * threads

    start = threading.Barrier(threads)

    def run(index):
        start.wait()
        counts[index], _ = take_all(counter, limit, taken[index])

    take_all(np.zeros(1, np.int64), 1, np.zeros(1, np.int64))  # compile before the race
    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    values = np.concatenate([taken[i][: counts[i]] for i in range(threads)])
    assert len(values) == limit
    assert np.array_equal(np.sort(values), np.arange(limit))
