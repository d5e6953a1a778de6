"""app/engine/jobs.py: how a handler waits for a request's end, woken once rather than at every
step of the engine, how a paced stream's end goes out at once, and when a score's client
gets its place back."""

import asyncio
import threading

import numpy as np
import pytest

from app.engine.jobs import Job, JobFailed, ScoreJob
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
        from_another_thread(job.wake)
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert job._end_waiter is not None  # still waiting: no step woke it
    from_another_thread(job.finish)
    await asyncio.wait_for(waiting, 5)
    assert job.done and not job.cancelled


async def test_finished_raises_when_the_engine_failed_the_job() -> None:
    job = a_job()
    waiting = asyncio.create_task(job.finished())
    await asyncio.sleep(0)
    from_another_thread(lambda: job.finish("the engine could not finish this request"))
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


async def test_the_end_cuts_a_streams_pause_short() -> None:
    # A stream paced at one chunk every 30 s: its first chunk goes out at once, and the
    # rest, with the end, as soon as the job ends, not at the end of the pause.
    job = a_job()
    job.output.extend([0, 1], held=0)
    chunks = job.chunks(min_interval=30.0)
    assert (await asyncio.wait_for(anext(chunks), 5)).text == "ab"
    rest = asyncio.create_task(anext(chunks))
    await asyncio.sleep(0.05)  # pausing now
    assert not rest.done() and job._end_waiter is not None

    def the_end() -> None:
        job.output.extend([1, 0, 0], held=0)
        job.output.finish("length")
        job.finish()

    from_another_thread(the_end)
    assert (await asyncio.wait_for(rest, 5)).text == "baa"
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(chunks), 5)
    assert job._end_waiter is None


async def test_a_pause_that_runs_out_leaves_no_waiter_behind() -> None:
    job = a_job()
    job.output.extend([0], held=0)
    chunks = job.chunks(min_interval=0.05)
    assert (await anext(chunks)).text == "a"
    job.output.extend([1], held=0)
    assert (await asyncio.wait_for(anext(chunks), 5)).text == "b"  # after the pause
    assert job._end_waiter is None and not job.done
    await chunks.aclose()  # the client leaves: the job is cancelled
    assert job.cancelled


def a_score_job(released: list[str]) -> ScoreJob:
    job = ScoreJob(np.arange(3, dtype=np.int32), 0, "tiny", "a")
    job.on_finish(lambda: released.append("a"))
    return job


def test_a_scores_place_waits_for_its_answer_to_be_written() -> None:
    released: list[str] = []
    job = a_score_job(released)
    job.scorer = object()  # type: ignore[assignment]  # started: it has scores to answer
    from_another_thread(job.finish)
    assert job.done and released == []  # the answer is not written yet
    job.answered()
    job.answered()
    assert released == ["a"]  # once


def test_a_score_answered_before_the_engine_ends_it_goes_back_at_the_end() -> None:
    released: list[str] = []
    job = a_score_job(released)
    job.scorer = object()  # type: ignore[assignment]
    job.cancel()
    job.answered()  # the client left while it was being scored
    assert released == []  # the engine still holds its arrays
    from_another_thread(job.finish)
    assert released == ["a"]


def test_a_score_that_never_started_goes_back_at_the_end() -> None:
    released: list[str] = []
    job = a_score_job(released)
    job.cancel()
    from_another_thread(job.finish)  # dropped before the engine made a scorer
    assert released == ["a"]
