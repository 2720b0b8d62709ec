"""The agent's blocking disk work, run off the event loop in a small pool of threads.

Every 2PC step of the agent is one call here (stage + seal, commit, the bookkeeping after the
announcement), so what a call costs beside the disk work counts: with 25 agents of a benchmark
host stepping at once, ``anyio.to_thread.run_sync`` spent ~50 µs of CPU per call and woke ~5
threads (a checkpoint, a capacity limiter, a ``queue.Queue`` and its ``Condition`` per worker,
a context copy); see docs/profile-100-agents.md. Here jobs go through one C-level
``SimpleQueue`` that whichever worker is free takes from, and each result comes back with one
``call_soon_threadsafe``: ~2× less CPU per call with fsyncing jobs, and fewer wake-ups.

The semantics are anyio's default: a caller already cancelled does not start the job; once
started, the job is never abandoned — a cancelled caller waits for it to finish (a disk step
is not left half-done behind the agent's back), gets its result, and sees the cancellation at
its next checkpoint.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

T = TypeVar("T")

# Enough for every agent of a 25-agent benchmark host to fsync at once (the disk gains from
# the parallelism: docs/profile-100-agents.md); one agent needs a handful. Threads stay once
# started: an agent's concurrency, and so the pool, is bounded and small.
MAX_THREADS = 32

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class _Pool:
    def __init__(self, max_threads: int) -> None:
        self._max = max_threads
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # workers free, with no queued job claimed for them
        self._backlog = 0  # queued jobs that found every worker busy and the pool full
        self._threads = 0

    def submit(self, job: _Job) -> None:
        spawn = False
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # an idle worker will take this one
            elif self._threads < self._max:
                self._threads += 1
                spawn = True
            else:
                self._backlog += 1  # the next worker to finish takes it
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name="agent-disk", daemon=True).start()

    def _work(self) -> None:
        while True:
            loop, fut, fn, args = self._jobs.get()
            try:
                result: Any = fn(*args)
                ok = True
            except BaseException as exc:  # the caller gets it, whatever it is
                result, ok = exc, False
            try:
                loop.call_soon_threadsafe(_settle, fut, ok, result)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
            del fut, fn, args, result  # no references kept while idle
            with self._lock:
                if self._backlog > 0:
                    self._backlog -= 1
                else:
                    self._idle += 1


def _settle(fut: asyncio.Future[Any], ok: bool, result: Any) -> None:
    if fut.done():  # cannot be cancelled (shielded), but never raise in the loop
        return
    if ok:
        fut.set_result(result)
    else:
        fut.set_exception(result)


_pool = _Pool(MAX_THREADS)


async def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; its result, or its exception raised here."""
    await anyio.lowlevel.checkpoint_if_cancelled()
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    _pool.submit((loop, fut, fn, args))
    with anyio.CancelScope(shield=True):
        result = await fut
    return result
