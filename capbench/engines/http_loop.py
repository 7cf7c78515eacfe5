"""The event loop an HTTP engine's runs share: one per engine and process, with one client and pool.

Sharing them is what makes an engine's ``concurrency`` one limit per server across every caller
(threads, event loops, calls), lets calls reuse the client's connections, and keeps one set of
per-server figures (:class:`EndpointStats`). Used by :mod:`capbench.engines.openai`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capbench.engines.base import Response


@dataclass
class EndpointStats:
    """What one base URL was sent by this process's runs of an engine; plain numbers."""

    requests: int = 0  # HTTP calls sent: retries and extra draws included
    retries: int = 0  # of those, calls that repeated a failed one
    errors: int = 0  # calls that ended in a failure, after any retries
    seconds: float = 0.0  # time spent waiting for replies, summed over concurrent calls
    in_flight: int = 0
    peak_in_flight: int = 0


class Pool:
    """Base URLs with one concurrency limit each; a call goes to the least busy one.

    One pool serves every run of an engine (on its event loop), so the limits, the busy counts
    that spread the load and the statistics cover all callers together.
    """

    def __init__(self, urls: tuple[str, ...], concurrency: int, stats: dict[str, EndpointStats] | None = None) -> None:
        self.urls = urls
        self.busy = [0] * len(urls)  # calls holding or waiting for each endpoint's slots
        self.limits = [asyncio.Semaphore(concurrency) for _ in urls]
        self.next = 0
        self.stats = stats if stats is not None else {url: EndpointStats() for url in urls}

    @asynccontextmanager
    async def slot(self, retry: bool = False) -> AsyncIterator[str]:
        """Hold a slot on the least busy endpoint (round robin among ties) and yield its URL."""
        count = len(self.urls)
        index = min(((self.next + k) % count for k in range(count)), key=lambda i: self.busy[i])
        self.next = (index + 1) % count
        self.busy[index] += 1
        try:
            async with self.limits[index]:
                stats = self.stats[self.urls[index]]
                stats.requests += 1
                stats.retries += retry
                stats.in_flight += 1
                stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
                start = time.perf_counter()
                try:
                    yield self.urls[index]
                finally:
                    stats.in_flight -= 1
                    stats.seconds += time.perf_counter() - start
        finally:
            self.busy[index] -= 1


def _new_lock() -> None:
    global LOCK
    LOCK = threading.RLock()


#: Guards starting, using and stopping engines' loops. Re-entrant, because a loop's finalizer may
#: run from garbage collection while this thread holds it; new in a forked child, where a thread
#: of the parent may have held it.
LOCK = threading.RLock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)


class Loop:
    """An engine's event loop, on a daemon thread, with the HTTP client and pool all its runs share.

    Sharing them is what makes ``concurrency`` one limit per server across every caller (threads,
    event loops, calls) and lets calls reuse the client's connections. A loop belongs to the process
    that started it: a forked child or an unpickled engine starts its own.
    """

    def __init__(
        self, urls: tuple[str, ...], concurrency: int, timeout: float, stats: dict[str, EndpointStats] | None
    ) -> None:
        import httpx  # an optional dependency (the engine names its extra when httpx is missing)

        slots = concurrency * len(urls)
        self.pid = os.getpid()
        self.closed = False
        # No headers here: the API key is read at each run and sent with each request.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
        )
        self.pool = Pool(urls, concurrency, stats)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="capbench-openai", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def submit(self, work: Coroutine[Any, Any, list[Response]]) -> concurrent.futures.Future[list[Response]]:
        """Schedule ``work`` on the loop (call with ``LOCK`` held, so ``stop`` cannot slip in between)."""
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def stop(self, wait: bool = True) -> None:
        """Cancel the runs in flight, close the client and end the loop; a no-op in another process.

        Args:
            wait: Wait for the loop's thread to end (never on the loop's own thread).
        """
        with LOCK:
            if self.closed or self.pid != os.getpid():
                return
            self.closed = True
            # Submitted under the lock: every run submitted before is cancelled, none comes after.
            done = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        done.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self.loop.stop))
        if wait and threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()
