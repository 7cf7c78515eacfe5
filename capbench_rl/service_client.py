"""Clients of capbench's reward service (``capbench serve``): a scoring call, and a TRL reward function.

:func:`score` (and :func:`ascore`, its async twin) sends a batch of items to ``POST /v1/score``
and returns one result per item, in order: ``{"id", "rewards": {name: float | None}, "errors":
{name: reason}}``. A failed reward is ``None`` with a named reason, never 0. The client waits
and retries where the service says it may: a 429 after its ``Retry-After`` seconds, a 5xx or a
connection error with capped exponential backoff and jitter (the service may be restarting;
what it judged already comes from its cache), all within a bounded total wait. Any other 4xx
raises one :class:`ServiceError` holding the server's message.

:class:`ServiceReward` is a capbench reward scored by the service, as TRL's ``GRPOTrainer``
takes it: picklable, async (TRL >= 1.16 detects an instance with an async ``__call__``) and
logged under its ``__name__``. It turns TRL's dataset columns into items and masks the length
band locally, as :mod:`capbench_rl.rewards` does. Importing this module loads neither judges
nor torch: a GRPOTrainer script needs only this module, httpx and a running service.

The bearer token is read from an environment variable (default ``CAPBENCH_SERVE_TOKEN``) at each
call; it goes into the ``Authorization`` header only, never into a log line or an error.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from capbench.errors import CapbenchError, ConfigError, MissingDependencyError
from capbench_rl import rewards as R
from capbench_rl.service_items import ImageMode, masked_rollouts, rollout_item

TOKEN_ENV = "CAPBENCH_SERVE_TOKEN"
"""The environment variable the bearer token is read from, unless a client names another."""

#: The service's usage over every call this process made: judge_calls, cache_hits, failures, seconds.
USAGE: Counter[str] = Counter()
#: ... over the calls a prefetch made (:mod:`capbench_rl.overlap`), kept apart from :data:`USAGE`.
PREFETCH_USAGE: Counter[str] = Counter()
_USAGE_LOCK = threading.Lock()
log = logging.getLogger(__name__)


class ServiceError(CapbenchError):
    """The reward service refused a request, or did not answer within the client's patience."""


def check_url(url: str, field: str = "url") -> str:
    """Return the service's base URL without a trailing slash; refuse one that is not http(s)://HOST."""
    parts = urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{field} {url!r} is not a service address; give http(s)://HOST:PORT of `capbench serve`, "
            "e.g. http://127.0.0.1:8765"
        )
    return str(url).rstrip("/")


def service_usage(prefetch: bool = False) -> dict[str, float]:
    """What the service reported spending on this process's calls so far (judge calls, cache hits, failures).

    Args:
        prefetch: The prefetches' calls instead (judging that overlapped generation), which the
            other figures leave out.
    """
    with _USAGE_LOCK:
        return dict(PREFETCH_USAGE if prefetch else USAGE)


def score(
    url: str,
    items: Sequence[Mapping[str, Any]],
    rewards: Sequence[str],
    *,
    token_env: str = TOKEN_ENV,
    timeout: float = 600.0,
    retries: int = 8,
    max_wait: float = 600.0,
    chunk: int = 256,
) -> list[dict[str, Any]]:
    """Score ``items`` with the service's ``rewards``; one result per item, in order.

    Args:
        url: The service's base URL (``http://127.0.0.1:8765``).
        items: The contract's items (caption, image, references; see docs/rl.md).
        rewards: Reward names the service computes for every item (an item may name a subset).
        token_env: Environment variable holding the bearer token (unset: no token is sent).
        timeout: Seconds one request may take.
        retries: Tries after the first on a 5xx or a connection error, per request.
        max_wait: Most seconds spent waiting between tries (Retry-After and backoff), per request.
        chunk: Items per request at most; a larger batch goes as concurrent requests (the service
            judges requests that arrive together in shared batches).

    Raises:
        ServiceError: a 4xx other than 429 (with the server's message), or patience ran out.
    """
    calls = _calls(url, items, rewards, token_env, retries, max_wait, chunk)
    if len(calls) <= 1:
        return _post(calls[0], timeout) if calls else []
    with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
        return [r for part in pool.map(lambda call: _post(call, timeout), calls) for r in part]


async def ascore(
    url: str,
    items: Sequence[Mapping[str, Any]],
    rewards: Sequence[str],
    *,
    token_env: str = TOKEN_ENV,
    timeout: float = 600.0,
    retries: int = 8,
    max_wait: float = 600.0,
    chunk: int = 256,
) -> list[dict[str, Any]]:
    """:func:`score`, without blocking the event loop."""
    calls = _calls(url, items, rewards, token_env, retries, max_wait, chunk)
    if not calls:
        return []
    async with _httpx().AsyncClient(timeout=timeout) as client:
        parts = await asyncio.gather(*(_apost(call, client) for call in calls))
    return [r for part in parts for r in part]


def _calls(
    url: str, items: Sequence[Mapping[str, Any]], rewards: Sequence[str], token_env: str, retries: int,
    max_wait: float, chunk: int,
) -> list[_Call]:  # fmt: skip
    """One request per ``chunk`` items (none for no items)."""
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1 item, not {chunk}")
    starts = range(0, len(items), chunk)
    return [_Call.make(url, items[i : i + chunk], rewards, token_env, retries, max_wait) for i in starts]


def _post(call: _Call, timeout: float) -> list[dict[str, Any]]:
    """Send one request until it is answered, waiting as the service and the client's patience say."""
    httpx = _httpx()
    with httpx.Client(timeout=timeout) as client:
        while True:
            try:
                response = client.post(call.endpoint, json=call.body, headers=call.headers())
            except httpx.TransportError as exc:
                time.sleep(call.retry(None, None, _reason(exc)))
                continue
            answer = call.answer(response)
            if isinstance(answer, list):
                return answer
            time.sleep(answer)


async def _apost(call: _Call, client: Any) -> list[dict[str, Any]]:
    """:func:`_post` on an async client."""
    httpx = _httpx()
    while True:
        try:
            response = await client.post(call.endpoint, json=call.body, headers=call.headers())
        except httpx.TransportError as exc:
            await asyncio.sleep(call.retry(None, None, _reason(exc)))
            continue
        answer = call.answer(response)
        if isinstance(answer, list):
            return answer
        await asyncio.sleep(answer)


def health(url: str, *, token_env: str = TOKEN_ENV, timeout: float = 10.0) -> dict[str, Any]:
    """``GET /health`` once, without retrying; return its JSON body.

    Raises:
        ServiceError: the service is not reachable, or answered with an error.
    """
    httpx = _httpx()
    base = check_url(url)
    try:
        response = httpx.get(f"{base}/health", headers=_auth(token_env), timeout=timeout)
    except httpx.TransportError as exc:
        raise ServiceError(f"the reward service at {base} is not answering ({_reason(exc)})") from None
    if response.status_code != 200:
        raise ServiceError(
            f"the reward service at {base} answered /health with HTTP {response.status_code}: {_message(response)}"
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}


@dataclass
class _Call:
    """One request and the client's patience with it: when to wait, how long, and when to give up."""

    base: str
    endpoint: str
    body: dict[str, Any]
    count: int
    token_env: str
    retries: int
    max_wait: float
    tries: int = 0
    waited: float = 0.0
    backoff: float = 0.5
    max_backoff: float = 30.0

    @classmethod
    def make(
        cls, url: str, items: Sequence[Mapping[str, Any]], rewards: Sequence[str], token_env: str, retries: int,
        max_wait: float,
    ) -> _Call:  # fmt: skip
        base = check_url(url)
        body = {"rewards": list(rewards), "items": [dict(item) for item in items]}
        return cls(base, f"{base}/v1/score", body, len(items), token_env, retries, max_wait)

    def headers(self) -> dict[str, str]:
        """The request's headers, the token read now (a rotated token is picked up on the next try)."""
        return _auth(self.token_env)

    def answer(self, response: Any) -> list[dict[str, Any]] | float:
        """The results of a 200; else the seconds to wait before trying again; else raise."""
        status = response.status_code
        if status == 200:
            return self._results(response)
        if status == 429 or status >= 500:
            return self.retry(status, response.headers.get("Retry-After"), f"HTTP {status}: {_message(response)}")
        hint = ""
        if status in (401, 403):
            given = "is set" if os.environ.get(self.token_env) else "is not set"
            hint = f" (the client sends the token in ${self.token_env}, which {given})"
        raise ServiceError(
            f"the reward service at {self.base} refused the request (HTTP {status}): {_message(response)}{hint}"
        )

    def retry(self, status: int | None, retry_after: str | None, reason: str) -> float:
        """Seconds to wait before the next try, or raise when the retries or the total wait are spent."""
        if status == 429:
            delay = _seconds(retry_after)
            if delay is None:
                delay = self.backoff
            delay = max(delay, 0.05)  # a Retry-After of 0 must not spin
        else:
            self.tries += 1
            if self.tries > self.retries:
                hint = "is `capbench serve` running there?" if status is None else "see the service's log"
                raise ServiceError(
                    f"the reward service at {self.base} did not answer after {self.tries} tries ({reason}); {hint}"
                )
            delay = min(self.max_backoff, self.backoff * 2 ** (self.tries - 1)) * random.uniform(0.5, 1.0)
        if self.waited + delay > self.max_wait:
            raise ServiceError(
                f"the reward service at {self.base} was still busy after {self.waited:.0f} s of waiting "
                f"({reason}); raise the client's max_wait, or give the service more judges"
            )
        self.waited += delay
        log.info("reward service at %s: %s; trying again in %.1f s", self.base, reason, delay)
        return delay

    def _results(self, response: Any) -> list[dict[str, Any]]:
        try:
            body = response.json()
            results = body["results"]
        except (ValueError, KeyError, TypeError):
            raise ServiceError(f"the reward service at {self.base} answered without a results list") from None
        if not isinstance(results, list) or len(results) != self.count:
            got = len(results) if isinstance(results, list) else type(results).__name__
            raise ServiceError(f"the reward service at {self.base} answered {got} results for {self.count} items")
        usage = body.get("usage")
        if isinstance(usage, Mapping):
            with _USAGE_LOCK:
                counter = PREFETCH_USAGE if R.PREFETCH.get() else USAGE
                counter.update({k: v for k, v in usage.items() if isinstance(v, (int, float))})
        return [
            {"id": r.get("id"), "rewards": dict(r.get("rewards") or {}), "errors": dict(r.get("errors") or {})}
            for r in results
        ]


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise MissingDependencyError("httpx", "rl", "the reward service's client") from None
    return httpx


def _auth(token_env: str) -> dict[str, str]:
    token = os.environ.get(token_env, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _reason(exc: Exception) -> str:
    """A transport error in words, without the request (and so without its headers)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _message(response: Any) -> str:
    """The server's own message: FastAPI's ``detail``, an ``error``, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or "(no message)"
    if isinstance(body, Mapping):
        for key in ("detail", "error", "message"):
            value = body.get(key)
            if isinstance(value, Mapping) and "message" in value:
                value = value["message"]
            if value:
                return value if isinstance(value, str) else str(value)
    return str(body)[:500]


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not retry_after:
        return None
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ServiceReward:
    """A capbench reward scored by a running ``capbench serve``, as a TRL reward function.

    Picklable (plain settings, no open connection), async, and named: TRL logs it under
    ``name`` (default: the reward's name). A reward the service could not compute is ``None``,
    which TRL leaves out; with ``band``, a rollout whose length ratio lies outside it gets 0
    without being sent, as the in-process linguistic reward does.

    Args:
        reward: The service's reward name (``balcap_precision``, ``caprl_qa_utility``, …).
        url: The service's base URL.
        name: The name TRL logs the reward under.
        token_env: Environment variable holding the bearer token.
        images: ``path`` (trainer and service share a file system) or ``base64`` (inline).
        band: [τ_l, τ_u] of the length ratio outside which the reward is 0 (None: no masking).
        unit: ``words`` or ``tokens`` (of ``tokenizer``, the policy's name) for the length ratio.
        timeout, retries, max_wait: As :func:`score` takes them.
    """

    def __init__(
        self,
        reward: str,
        url: str,
        *,
        name: str | None = None,
        token_env: str = TOKEN_ENV,
        images: ImageMode = "path",
        band: tuple[float, float] | None = None,
        unit: R.Unit = "words",
        tokenizer: str | None = None,
        timeout: float = 600.0,
        retries: int = 8,
        max_wait: float = 600.0,
    ) -> None:
        if images not in ("path", "base64"):
            raise ConfigError(f"images must be 'path' or 'base64', not {images!r}")
        self.reward = reward
        self.url = check_url(url)
        self.__name__ = name or reward
        self.token_env = token_env
        self.images: ImageMode = images
        self.band: tuple[float, float] | None = (float(band[0]), float(band[1])) if band is not None else None
        self.unit: R.Unit = unit
        self.tokenizer = tokenizer
        self.timeout, self.retries, self.max_wait = timeout, retries, max_wait

    def __repr__(self) -> str:
        return f"ServiceReward({self.reward!r}, {self.url!r}, name={self.__name__!r})"

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Score the rollouts with the service; None where it could not, 0 outside the length band."""
        start = time.perf_counter()
        captions = [R.completion_text(c) for c in completions]
        references = columns.get("reference_caption")
        masked = masked_rollouts(captions, references, self.band, self.unit, self.tokenizer)
        todo = [i for i, m in enumerate(masked) if not m]
        items = await asyncio.to_thread(
            lambda: [rollout_item(i, captions[i], columns, self.images) for i in todo]
        )  # images may be read from disk
        results = await ascore(
            self.url, items, [self.reward], token_env=self.token_env, timeout=self.timeout, retries=self.retries,
            max_wait=self.max_wait,
        ) if items else []  # fmt: skip
        out: list[float | None] = [0.0] * len(captions)
        reasons: Counter[str] = Counter()
        for i, result in zip(todo, results, strict=True):
            value = result["rewards"].get(self.reward)
            out[i] = None if value is None else float(value)
            if value is None:
                reasons[str(result["errors"].get(self.reward, "no value and no reason given"))] += 1
        if reasons and not R.PREFETCH.get():  # a prefetch's failures are TRL's call's to report
            shown = "; ".join(f"{reason} (×{n})" for reason, n in reasons.most_common(3))
            log.warning("reward %s: %d of %d rollouts unscored by the service: %s", self.reward,
                        sum(reasons.values()), len(out), shown)  # fmt: skip
        R._count(self.reward, len(out), sum(reasons.values()), sum(masked), start)
        return out
