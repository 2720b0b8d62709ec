"""The agent's disk thread pool: results, errors, parallelism, a bound, and no abandoned job."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from confbus.agent import offload

pytestmark = pytest.mark.anyio

WAIT_S = 10.0  # every wait on another thread is bounded: a broken pool fails, never hangs


async def test_returns_the_result_from_another_thread() -> None:
    loop_thread = threading.get_ident()
    ident, total = await offload.run(lambda a, b: (threading.get_ident(), a + b), 2, 3)
    assert total == 5
    assert ident != loop_thread  # never on the event loop


async def test_raises_the_jobs_own_exception() -> None:
    boom = OSError(28, "No space left on device")

    def fail() -> None:
        raise boom

    with pytest.raises(OSError) as caught:
        await offload.run(fail)
    assert caught.value is boom


async def test_jobs_run_in_parallel_up_to_the_bound_and_the_rest_wait_their_turn() -> None:
    # MAX_THREADS jobs that only finish once all of them are running at the same time: they
    # can only pass the barrier if the pool runs that many at once.
    barrier = threading.Barrier(offload.MAX_THREADS, timeout=WAIT_S)
    threads: set[int] = set()
    lock = threading.Lock()

    def meet() -> int:
        with lock:
            threads.add(threading.get_ident())
        return barrier.wait()

    def note() -> None:
        with lock:
            threads.add(threading.get_ident())

    results: list[int] = []

    async def one() -> None:
        results.append(await offload.run(meet))

    async def another() -> None:
        await offload.run(note)

    async with anyio.create_task_group() as tg:
        for _ in range(offload.MAX_THREADS):
            tg.start_soon(one)
        for _ in range(2 * offload.MAX_THREADS):  # queued behind a full pool
            tg.start_soon(another)
    assert sorted(results) == list(range(offload.MAX_THREADS))  # nobody broke the barrier
    assert len(threads) <= offload.MAX_THREADS

    # After the backlog, the pool still hands out work: the bookkeeping did not leak.
    barrier.reset()
    results.clear()
    async with anyio.create_task_group() as tg:
        for _ in range(offload.MAX_THREADS):
            tg.start_soon(one)
    assert sorted(results) == list(range(offload.MAX_THREADS))


async def test_a_cancelled_caller_waits_for_its_job_to_finish() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []
    seen_when_returned: list[list[str]] = []

    def job() -> None:
        started.set()
        release.wait(WAIT_S)
        finished.append("done")

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            await offload.run(job)
            seen_when_returned.append(list(finished))
            await anyio.lowlevel.checkpoint()  # where the pending cancellation lands
            seen_when_returned.append(["not cancelled"])

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, scope)
        assert await anyio.to_thread.run_sync(started.wait, WAIT_S)
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert seen_when_returned == []  # cancelled, yet still waiting for the disk step
        release.set()
    assert seen_when_returned == [["done"]]
    assert scope.cancelled_caught


async def test_an_already_cancelled_caller_does_not_start_a_job() -> None:
    # Had the job been queued, it would hold one of the pool's threads until released, and
    # the MAX_THREADS jobs after it could not all meet at the barrier: it would break.
    release = threading.Event()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await offload.run(release.wait, WAIT_S)
    assert scope.cancelled_caught

    barrier = threading.Barrier(offload.MAX_THREADS, timeout=WAIT_S)
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(offload.MAX_THREADS):
                tg.start_soon(offload.run, barrier.wait)
    finally:
        release.set()
