"""Batching across callers: requests that arrive within a short window are judged together.

One collector task takes the first waiting request, waits the window for more, and hands all
of them to :meth:`Service.score` in a single worker thread (the event loop stays free to take
requests meanwhile; those arriving during a batch form the next one). The queue is bounded in
items: a request that does not fit is refused with 429 and a Retry-After.
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
    """Collects requests into batches and scores each batch in the worker thread.

    Args:
        service: What scores a batch.
        window: Seconds to wait for more requests after the first of a batch arrives.
        max_queue: Items that may wait at most (the batch being scored not counted).
        on_batch: Called with (requests, items, seconds) after each batch.
    """

    def __init__(
        self,
        service: Service,
        window: float,
        max_queue: int,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.service = service
        self.window = window
        self.max_queue = max_queue
        self.on_batch = on_batch
        #: Items waiting to be judged, and items of the batch being judged now.
        self.waiting = 0
        self.in_flight = 0
        self.last_batch_seconds = 0.0
        self._stopping = False
        self._queue: asyncio.Queue[Job | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capbench-serve-judge")

    def start(self) -> None:
        """Start collecting (inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="capbench-serve-batcher")

    def submit(self, items: Sequence[Item]) -> asyncio.Future[Answer]:
        """Queue a request's items; return the future of its answer.

        Raises:
            RequestError: 429 with Retry-After when the items do not fit in the queue, or 503 when stopping.
        """
        if self._queue is None or self._task is None or self._task.done() or self._stopping:
            raise RequestError(503, "the service is stopping; send the request to another instance or retry later")
        if self.waiting + len(items) > self.max_queue:
            retry = max(1, math.ceil(self.last_batch_seconds))
            raise RequestError(
                429,
                f"the queue is full ({self.waiting} items waiting, at most {self.max_queue}: --max-queue); "
                f"retry after {retry} s",
                {"Retry-After": str(retry)},
            )
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.waiting += len(items)
        self._queue.put_nowait(Job(items, future))
        return future

    async def stop(self) -> None:
        """Finish every queued request, then stop the collector and the worker thread."""
        self._stopping = True
        if self._queue is not None and self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            jobs = [first]
            deadline = loop.time() + self.window
            while not stopping:
                left = deadline - loop.time()
                try:
                    job = self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if job is None:
                    stopping = True  # finish this batch, then stop
                else:
                    jobs.append(job)
            await self._score(loop, jobs)

    async def _score(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
        sizes = [len(job.items) for job in jobs]
        self.waiting -= sum(sizes)
        self.in_flight = sum(sizes)
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
            self.in_flight = 0
            self.last_batch_seconds = time.perf_counter() - started
            if self.on_batch is not None:
                self.on_batch(len(jobs), sum(sizes), self.last_batch_seconds)
