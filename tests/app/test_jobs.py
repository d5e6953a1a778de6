"""app/jobs.py: how a handler waits for a request's end, woken once rather than at every
step of the engine."""

import asyncio
import threading

import pytest

from app.jobs import Job, JobFailed
from model.decoding.params import GenerationParams

pytestmark = pytest.mark.anyio


def a_job() -> Job:
    return Job(GenerationParams(prime=(0,), length=5, seed=1), ("a", "b"), "tiny")


def from_another_thread(work) -> None:
    """As the engine does: from its own thread."""
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


async def test_finished_is_woken_at_the_end_and_not_by_each_step() -> None:
    job = a_job()
    waiting = asyncio.create_task(job.finished())
    await asyncio.sleep(0)  # it registers its waiter
    for _ in range(20):  # the engine's wake after every step of the row
        from_another_thread(job._wake)
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert job._end_waiter is not None  # still waiting: no step woke it
    from_another_thread(job._finish)
    await asyncio.wait_for(waiting, 5)
    assert job.done and not job.cancelled


async def test_finished_raises_when_the_engine_failed_the_job() -> None:
    job = a_job()
    waiting = asyncio.create_task(job.finished())
    await asyncio.sleep(0)
    from_another_thread(lambda: job._finish("the engine could not finish this request"))
    with pytest.raises(JobFailed, match="could not finish"):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(JobFailed):  # and at once, for a job already over
        await job.finished()


async def test_a_handler_that_leaves_early_cancels_the_job() -> None:
    job = a_job()
    waiting = asyncio.create_task(job.finished())
    await asyncio.sleep(0)
    waiting.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert job.cancelled and not job.done
