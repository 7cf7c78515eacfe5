"""The event loop an HTTP engine's runs share: one per engine and process, with one client and pool.

Sharing them is what makes an engine's ``concurrency`` one limit per server across every caller
(threads, event loops, calls), lets calls reuse the client's connections, and keeps one set of
per-server figures (:class:`EndpointStats`). Used by :mod:`capbench.engines.openai`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
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
    affine: int = 0  # calls with a prefix key (Request.affinity_key) sent to the key's first choice
    spilled: int = 0  # calls with a key sent here because their first choice was full or out of rotation


#: Seconds a server that stopped answering stays out of rotation after its first failure; doubled
#: with each failure in a row, up to :data:`COOLDOWN_CAP`. Then one request probes it.
COOLDOWN = 1.0
COOLDOWN_CAP = 30.0
#: How far down the queue (in multiples of the pool's slots) a freed slot looks for a call whose
#: first choice it is, before it goes to the first call waiting.
AFFINITY_WINDOW = 4


@dataclass(eq=False)  # compared by identity: two calls may wait with the same fields
class _Waiting:
    """A call waiting for a slot: the server to avoid, its prefix key, and where its slot is handed."""

    avoid: str | None
    key: str | None
    handed: asyncio.Future[int]


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

    Prefix affinity: a call with a key (requests that share a long prompt prefix share one, see
    ``Request.affinity_key``) ranks the servers by rendezvous hashing of key and URL, the same
    order in every process, and goes to the first in that order that is in rotation and has a
    free slot. So requests sharing a prefix reach the same server, whose prefix cache holds it,
    while that server keeps up; beyond its ``concurrency`` they spill to the key's next choice
    (again the same one for every request of the key) rather than wait while others idle. A slot
    that frees goes to the first waiting call whose first choice it is (among the next
    :data:`AFFINITY_WINDOW` × slots waiting calls), else to the first waiting call: no server
    idles while calls wait. A call without a key goes to the least busy server, as before.
    """

    def __init__(
        self,
        urls: tuple[str, ...],
        concurrency: int,
        stats: dict[str, EndpointStats] | None = None,
        affinity: bool = True,
    ) -> None:
        self.urls = urls
        self.concurrency = concurrency
        self.affinity = affinity  # route calls with a prefix key to the key's server
        self.busy = [0] * len(urls)  # calls each endpoint holds now
        # Calls waiting for a slot, in order; each is handed a server only when a slot frees, so a
        # call never queues behind a server that dies meanwhile.
        self.waiting: list[_Waiting] = []
        self.dispatching = False  # a dispatch of the calls that just arrived is scheduled
        self._ranks: dict[str, list[int]] = {}
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

    def _ranked(self, key: str) -> list[int]:
        """The servers in ``key``'s order of preference (rendezvous hashing: stable, and the same everywhere)."""
        order = self._ranks.get(key)
        if order is None:
            weight = [hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest() for url in self.urls]
            order = sorted(range(len(self.urls)), key=lambda i: weight[i], reverse=True)
            if len(self._ranks) >= 65536:  # a bound on memory; orders are cheap to compute again
                self._ranks.clear()
            self._ranks[key] = order
        return order

    def _candidates(self, avoid: str | None, key: str | None) -> list[int]:
        """The servers a call may go to now, best first."""
        count, now = len(self.urls), time.monotonic()
        order = self._ranked(key) if key is not None else [(self.next + k) % count for k in range(count)]
        eligible = [i for i in order if self._eligible(i, now)]
        if not eligible:  # every server out of rotation: the one due back first, as a probe
            eligible = [min(order, key=lambda i: self.back_at[i])]
        return [i for i in eligible if self.urls[i] != avoid] or eligible

    def _pick(self, avoid: str | None, key: str | None = None, rank: int | None = None) -> int | None:
        """The server a call should go to now, or None to wait for a slot to free.

        With a key: the first server in the key's order that is free (with ``rank``, only the
        server of that rank among those in rotation, else None); without one, the least busy.
        """
        preferred = self._candidates(avoid, key)
        if rank is not None:
            if key is None:  # no preference: any free slot will do, at the first pass
                return self._pick(avoid) if rank == 0 else None
            chosen = preferred[rank] if rank < len(preferred) else None
            return chosen if chosen is not None and self.busy[chosen] < self.concurrency else None
        free = [i for i in preferred if self.busy[i] < self.concurrency]
        if not free:
            return None
        return free[0] if key is not None else min(free, key=lambda i: self.busy[i])

    @asynccontextmanager
    async def slot(self, retry: bool = False, avoid: str | None = None, key: str | None = None) -> AsyncIterator[str]:
        """Hold a slot on a server in rotation (not ``avoid`` if another can) and yield its URL.

        ``key`` (a prefix key) picks the key's server, as the class says; without it the least busy.
        """
        key = key if self.affinity and len(self.urls) > 1 else None
        # A call with a key takes its first choice at once, if free; else it waits for the calls
        # arriving with it (a batch arrives in one turn of the loop), and the free slots go to the
        # calls that prefer them most (:meth:`_dispatch`), rather than to whichever came first.
        index = self._pick(avoid, key, 0 if key is not None else None)
        if index is None:  # wait to be handed a slot as one frees (on a server chosen then)
            loop = asyncio.get_running_loop()
            entry = _Waiting(avoid, key, loop.create_future())
            self.waiting.append(entry)
            if key is not None and not self.dispatching and any(b < self.concurrency for b in self.busy):
                self.dispatching = True
                loop.call_soon(self._dispatch)
            try:
                index = await entry.handed
            except asyncio.CancelledError:
                if entry in self.waiting:
                    self.waiting.remove(entry)
                elif entry.handed.done() and not entry.handed.cancelled():  # handed a slot, cancelled before use
                    self._release(entry.handed.result())
                raise
        else:
            self._take(index)
        stats = self.stats[self.urls[index]]
        if key is not None:
            if index == self._candidates(None, key)[0]:
                stats.affine += 1
            else:
                stats.spilled += 1
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
        """Free a slot and hand the free slots to waiting calls (no await).

        Among the first :data:`AFFINITY_WINDOW` × slots waiting calls, in order: first to calls
        whose first choice has a free slot (calls without a key take any), then to calls whose
        second choice has, and so on; then to any waiting call, in order, so that no server idles
        while calls wait. A key's requests thus spread over as few servers as keep them busy.
        """
        self.busy[index] -= 1
        self.probing[index] = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiting calls, as :meth:`_release` says."""
        self.dispatching = False
        self.waiting = [entry for entry in self.waiting if not entry.handed.done()]
        window = AFFINITY_WINDOW * self.concurrency * len(self.urls)
        ranks: list[int | None] = [*range(len(self.urls)), None] if self.affinity else [None]
        for rank in ranks:
            for position, entry in enumerate(list(self.waiting)):
                if all(busy >= self.concurrency for busy in self.busy) or (rank is not None and position >= window):
                    break
                chosen = self._pick(entry.avoid, entry.key, rank)
                if chosen is not None:
                    self.waiting.remove(entry)
                    self._take(chosen)
                    entry.handed.set_result(chosen)

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
        self,
        urls: tuple[str, ...],
        concurrency: int,
        timeout: float,
        stats: dict[str, EndpointStats] | None,
        affinity: bool = True,
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
        self.pool = Pool(urls, concurrency, stats, affinity)
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
