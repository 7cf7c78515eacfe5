"""Batching across callers: requests that arrive within a short window are judged together.

One collector task takes the first waiting request, waits the window for more, and starts the
batch in a worker thread (:meth:`Service.score`) at once, while fewer than ``max_batches`` are
being judged; with every slot taken, requests wait in the queue and the next free slot takes
them all as one batch. Batches overlap, so the slowest item of one batch no longer leaves the
judges idle until the next starts; the event loop stays free to take requests meanwhile. The
queue is bounded in items, counting those waiting and those being judged: a request that does
not fit is refused with 429 and a Retry-After.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from capbench.serve.images import RequestError
from capbench.serve.items import Item
from capbench.serve.service import Service, split_usage

Answer = tuple[list[dict[str, Any]], dict[str, int]]
"""One request's results (in item order) and its share of the batch's judge usage."""


@dataclass
class Job:
    """One request's items waiting to be judged, and where its answer goes."""

    items: Sequence[Item]
    future: asyncio.Future[Answer]
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Collects requests into batches and judges up to ``max_batches`` of them at once, in worker threads.

    Args:
        service: What scores a batch.
        window: Seconds to wait for more requests after the first of a batch arrives.
        max_queue: Items accepted and not yet answered at most (waiting, or in a batch being judged).
        max_batches: Batches judged at once at most.
        on_batch: Called with (requests, items, seconds) after each batch.
    """

    def __init__(
        self,
        service: Service,
        window: float,
        max_queue: int,
        max_batches: int = 1,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.service = service
        self.window = window
        self.max_queue = max_queue
        self.max_batches = max_batches
        self.on_batch = on_batch
        #: Items waiting to be judged, items of the batches being judged now, and those batches.
        self.waiting = 0
        self.in_flight = 0
        self.batches = 0
        self.last_batch_seconds = 0.0
        self._stopping = False
        self._queue: asyncio.Queue[Job | None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=max_batches, thread_name_prefix="capbench-serve-judge")

    def start(self) -> None:
        """Start collecting (inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.max_batches)
        self._task = asyncio.create_task(self._run(), name="capbench-serve-batcher")

    def submit(self, items: Sequence[Item]) -> asyncio.Future[Answer]:
        """Queue a request's items; return the future of its answer.

        Raises:
            RequestError: 429 with Retry-After when the items do not fit in the queue, or 503 when stopping.
        """
        if self._queue is None or self._task is None or self._task.done() or self._stopping:
            raise RequestError(503, "the service is stopping; send the request to another instance or retry later")
        held = self.waiting + self.in_flight
        if held + len(items) > self.max_queue:
            retry = max(1, math.ceil(self.last_batch_seconds))
            raise RequestError(
                429,
                f"the queue is full ({self.waiting} items waiting and {self.in_flight} being judged, at most "
                f"{self.max_queue} in all: --max-queue); retry after {retry} s",
                {"Retry-After": str(retry)},
            )
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.waiting += len(items)
        self._queue.put_nowait(Job(items, future))
        return future

    async def stop(self) -> None:
        """Judge every queued request, wait for every batch being judged, then stop the worker threads."""
        self._stopping = True
        if self._queue is not None and self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        assert self._queue is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        last = False
        while not last:
            await self._slots.acquire()  # with every slot taken, requests wait in the queue: the next batch
            first = await self._queue.get()
            if first is None:
                self._slots.release()
                break
            jobs, last = await self._collect(loop, first)
            task = asyncio.create_task(self._score(loop, jobs), name="capbench-serve-batch")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self, loop: asyncio.AbstractEventLoop, first: Job) -> tuple[list[Job], bool]:
        """The requests that arrive within the window after ``first``; and whether the stop signal came."""
        assert self._queue is not None
        jobs = [first]
        deadline = loop.time() + self.window
        while True:
            left = deadline - loop.time()
            try:
                job = self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                return jobs, False
            if job is None:
                return jobs, True  # judge this batch, then stop
            jobs.append(job)

    async def _score(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
        assert self._slots is not None
        sizes = [len(job.items) for job in jobs]
        self.waiting -= sum(sizes)
        self.in_flight += sum(sizes)
        self.batches += 1
        started = time.perf_counter()
        try:
            results, usage = await loop.run_in_executor(self._executor, self.service.score, [j.items for j in jobs])
        except Exception as exc:  # a bug in scoring answers its requests with the error; the service carries on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
        else:
            for job, answer, share in zip(jobs, results, split_usage(usage, sizes), strict=True):
                if not job.future.done():
                    job.future.set_result((answer, share))
        finally:
            self.in_flight -= sum(sizes)
            self.batches -= 1
            self._slots.release()
            self.last_batch_seconds = time.perf_counter() - started
            if self.on_batch is not None:
                self.on_batch(len(jobs), sum(sizes), self.last_batch_seconds)
