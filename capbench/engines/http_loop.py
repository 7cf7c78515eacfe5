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
    """What one base URL was sent by this process's runs of an engine, and how it answered."""

    requests: int = 0  # HTTP calls sent: retries and extra draws included
    retries: int = 0  # of those, calls that repeated a failed one
    failed_calls: int = 0  # calls that failed (each retried one included)
    errors: int = 0  # requests that ended in a failure here, after any retries
    seconds: float = 0.0  # time spent waiting for replies, summed over concurrent calls
    in_flight: int = 0
    peak_in_flight: int = 0
    marked_down: int = 0  # times it was taken out of rotation (unreachable, or 502/503/504)
    down: bool = False  # out of rotation now, waiting for its next probe
    last_error: str = ""


#: Seconds a server that stopped answering stays out of rotation after its first failure; doubled
#: with each failure in a row, up to :data:`COOLDOWN_CAP`. Then one request probes it.
COOLDOWN = 1.0
COOLDOWN_CAP = 30.0


class Pool:
    """Base URLs with one concurrency limit each; a call goes to the least busy server in rotation.

    One pool serves every run of an engine (on its event loop), so the limits, the busy counts
    that spread the load and the statistics cover all callers together.

    A server that cannot be reached (or answers 502, 503, 504) leaves the rotation for a cooldown
    that doubles with each failure in a row (:data:`COOLDOWN` to :data:`COOLDOWN_CAP`); then one
    request at a time probes it, and the first answer puts it back. Calls go to servers in
    rotation while there are any; a retry avoids the server that just failed. So a server that
    dies for good costs the requests it held, which are retried on the others, and one that comes
    back is used again.
    """

    def __init__(self, urls: tuple[str, ...], concurrency: int, stats: dict[str, EndpointStats] | None = None) -> None:
        self.urls = urls
        self.concurrency = concurrency
        self.busy = [0] * len(urls)  # calls each endpoint holds now
        # Calls waiting for a slot, in order; each is handed a server only when a slot frees, so a
        # call never queues behind a server that dies meanwhile.
        self.waiting: list[tuple[str | None, asyncio.Future[int]]] = []
        self.next = 0
        self.stats = stats if stats is not None else {url: EndpointStats() for url in urls}
        for url in urls:
            self.stats[url].down = False
        self.strikes = [0] * len(urls)  # failures in a row
        self.back_at = [0.0] * len(urls)  # when a server out of rotation may be probed
        self.probing = [False] * len(urls)

    def _eligible(self, index: int, now: float) -> bool:
        return self.strikes[index] == 0 or (now >= self.back_at[index] and not self.probing[index])

    def in_rotation(self, avoid: str | None = None) -> bool:
        """Whether some server other than ``avoid`` may take a call now."""
        now = time.monotonic()
        return any(self._eligible(i, now) and url != avoid for i, url in enumerate(self.urls))

    def _pick(self, avoid: str | None) -> int | None:
        """The server a call should go to now, or None to wait for a slot to free."""
        count, now = len(self.urls), time.monotonic()
        order = [(self.next + k) % count for k in range(count)]
        eligible = [i for i in order if self._eligible(i, now)]
        if not eligible:  # every server out of rotation: the one due back first, as a probe
            eligible = [min(order, key=lambda i: self.back_at[i])]
        preferred = [i for i in eligible if self.urls[i] != avoid] or eligible
        free = [i for i in preferred if self.busy[i] < self.concurrency]
        return min(free, key=lambda i: self.busy[i]) if free else None

    @asynccontextmanager
    async def slot(self, retry: bool = False, avoid: str | None = None) -> AsyncIterator[str]:
        """Hold a slot on the least busy server in rotation (not ``avoid`` if another can) and yield its URL."""
        index = self._pick(avoid)
        if index is None:  # wait to be handed a slot as one frees (on a server chosen then)
            handed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            entry = (avoid, handed)
            self.waiting.append(entry)
            try:
                index = await handed
            except asyncio.CancelledError:
                if entry in self.waiting:
                    self.waiting.remove(entry)
                elif handed.done() and not handed.cancelled():  # handed a slot, cancelled before using it
                    self._release(handed.result())
                raise
        else:
            self._take(index)
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
            self._release(index)

    def _take(self, index: int) -> None:
        self.next = (index + 1) % len(self.urls)
        self.probing[index] = self.strikes[index] > 0
        self.busy[index] += 1

    def _release(self, index: int) -> None:
        """Free a slot and hand free slots to waiting calls, first come first served (no await)."""
        self.busy[index] -= 1
        self.probing[index] = False
        for entry in list(self.waiting):
            if all(busy >= self.concurrency for busy in self.busy):
                break
            avoid, handed = entry
            chosen = None if handed.done() else self._pick(avoid)
            if handed.done() or chosen is not None:
                self.waiting.remove(entry)
            if chosen is not None:
                self._take(chosen)
                handed.set_result(chosen)

    def answered(self, url: str, error: str | None = None, down: bool = False) -> None:
        """Record how ``url`` answered one call: fine, failed, or failed as a server that is not there."""
        index, stats = self.urls.index(url), self.stats[url]
        if error is None:
            self.strikes[index] = 0
            stats.down = False
            return
        stats.failed_calls += 1
        stats.last_error = error[:300]
        if down and (not stats.down or self.probing[index]):  # its first failure, or a failed probe
            self.strikes[index] += 1
            self.back_at[index] = time.monotonic() + min(COOLDOWN * 2 ** (self.strikes[index] - 1), COOLDOWN_CAP)
            stats.marked_down += not stats.down
            stats.down = True


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
