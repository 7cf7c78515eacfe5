"""The engine for any OpenAI-compatible server: vLLM serve, SGLang, llama.cpp's server, OpenAI.

Requests go to ``POST {base_url}/chat/completions`` over ``httpx``, spread over one or more base
URLs that serve the same model, each with its own concurrency limit. The limit holds for the
engine as a whole: every run, from whichever thread or event loop, is carried out on the engine's
one event loop (a daemon thread started on first use, one per process), through one HTTP client
whose connections are reused, so twenty threads judging at once still keep at most
``concurrency`` requests in flight at each server. Transient failures (429,
5xx, timeouts, lost connections, a 200 whose body is not a JSON object) are retried with capped
exponential backoff and full jitter, honouring ``Retry-After``; any other 4xx fails the request
at once. A request that still fails becomes a response with ``error`` set: nothing is raised
for one bad request.

Servers differ in what they accept, and the engine copes with what the common ones do:

- A text-only message is sent as a plain string: llama-cpp-python's server answers a list of
  parts with HTTP 500, and text-only models behind other servers may too.
- A JSON schema is sent in the standard ``{"type": "json_schema", ...}`` form. A server that
  rejects it (llama-cpp-python's answers HTTP 500 naming ``response_format``) is sent
  ``{"type": "json_object", "schema": ...}`` instead, which llama.cpp's servers and vLLM take,
  and after that nothing; the engine remembers the step down. Tolerant parsing does the rest.
- A server that ignores ``n`` (llama-cpp-python's returns one choice) is asked again for the
  missing draws, the seed of draw ``k`` being ``seed + k``.

The API key is read from the environment at each run, never stored on the engine, and masked
in every error message.

The fingerprint (the cache key's half that says which judge answered) holds what the server says
about the model it serves, asked once per engine; see :meth:`OpenAIEngine.fingerprint` for what
that can and cannot see, and ``revision=`` to pin it by hand.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from capbench.engines import http_loop
from capbench.engines.base import Choice, ImagePart, JsonSchema, Message, OnResult, Request, Response
from capbench.engines.http_loop import EndpointStats, Loop, Pool
from capbench.engines.images import data_url
from capbench.errors import ConfigError, EngineError, MissingDependencyError

try:
    import httpx
except ImportError:  # the engine says which extra to install when it is built
    httpx = None  # type: ignore[assignment]

JsonMode = Literal["json_schema", "json_object", "none"]
#: A server asking to wait longer than this is as good as down; give up on it sooner.
RETRY_AFTER_CEILING = 300.0
_NEXT_JSON_MODE: dict[JsonMode, JsonMode] = {"json_schema": "json_object", "json_object": "none", "none": "none"}
#: The fields of a ``GET /models`` entry that identify what is served. ``created`` and ``permission``
#: are left out: vLLM and llama.cpp's server stamp them with the time of the request.
SERVER_FIELDS = ("id", "owned_by", "root", "parent", "max_model_len", "meta")


def parse_base_urls(base_url: str | Sequence[str]) -> tuple[str, ...]:
    """Split comma-separated base URLs, drop trailing slashes, refuse repeats, and check the scheme."""
    items = base_url.split(",") if isinstance(base_url, str) else [u for part in base_url for u in part.split(",")]
    listed = [u.strip().rstrip("/") for u in items if u.strip()]
    urls = tuple(dict.fromkeys(listed))
    if len(urls) < len(listed):
        twice = next(u for u in urls if listed.count(u) > 1)
        raise ConfigError(
            f"openai engine: base URL {twice!r} is listed {listed.count(twice)} times; list each server once "
            "(to send one server more requests at once, raise concurrency=)"
        )
    if not urls:
        raise ConfigError("openai engine: give at least one base URL, e.g. http://127.0.0.1:8000/v1")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"openai engine: base URL {url!r} must start with http:// or https://")
    return urls


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying: rate limits, request timeouts and server errors."""
    return status in (408, 429) or status >= 500


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Return the wait before retry ``attempt`` (0-based): full jitter over a capped exponential."""
    # Full jitter spreads clients that failed together, so they do not all come back at once.
    return (rng or random).uniform(0.0, min(cap, base * 2.0**attempt))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date)."""
    if not value or not value.strip():
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def message_payload(message: Message, images: dict[str, str], uuids: bool = False) -> dict[str, Any]:
    """Convert a message to the chat format; ``images`` caches data URLs by content hash.

    With ``uuids`` each image part carries its content hash as ``uuid`` (vLLM's stable identity of
    a multimodal item: its caches then key the image by it instead of hashing the pixels again).
    """
    if not message.has_image:
        return {"role": message.role, "content": message.joined_text()}
    parts: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, ImagePart):
            ref = part.image
            if ref.sha256 not in images:
                images[ref.sha256] = data_url(ref.path)
            item: dict[str, Any] = {"type": "image_url", "image_url": {"url": images[ref.sha256]}}
            if uuids:
                item["uuid"] = ref.sha256
            parts.append(item)
        else:
            parts.append({"type": "text", "text": part.text})
    return {"role": message.role, "content": parts}


@dataclass(frozen=True)
class _Failure:
    """Why one HTTP call failed, and whether trying again may help."""

    message: str
    retryable: bool
    retry_after: float | None = None
    rejected_format: bool = False
    server_down: bool = False  # the server is not there (unreachable, or 502/503/504): try another


@dataclass
class _RunState:
    """What one run shares between its requests."""

    client: httpx.AsyncClient
    pool: Pool
    key: str
    headers: dict[str, str]
    images: dict[str, str] = field(default_factory=dict)
    uuids: bool = False  # tag images with their content hash (vLLM's multimodal uuid)


class OpenAIEngine:
    """Chat completions from an OpenAI-compatible server, batched, retried and spread over endpoints."""

    backend = "openai"
    supports_loglik = False
    #: Safe to call from several threads at once: all calls share the engine's loop and limits.
    concurrent = True

    def __init__(
        self,
        model: str,
        base_url: str | Sequence[str] = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        backoff_cap: float = 30.0,
        json_schema: Literal["auto", "on", "off"] = "auto",
        accepts_images: bool = True,
        revision: str | None = None,
        prefix_routing: bool = True,
        image_uuids: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        if httpx is None:
            raise MissingDependencyError("httpx", "openai", "the openai engine")
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0 or backoff_cap < 0:
            raise ConfigError(
                "openai engine: need concurrency >= 1, max_retries >= 0, timeout > 0, backoff and backoff_cap >= 0"
            )
        if image_uuids not in ("auto", "on", "off"):
            raise ConfigError(f"openai engine: image_uuids must be 'auto', 'on' or 'off', not {image_uuids!r}")
        if json_schema not in ("auto", "on", "off"):
            raise ConfigError(f"openai engine: json_schema must be 'auto', 'on' or 'off', not {json_schema!r}")
        self.model = model
        self.base_urls = parse_base_urls(base_url)
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.json_schema = json_schema
        self.accepts_images = accepts_images
        self.revision = revision
        #: Send requests that share a prompt prefix to the same server (``Request.affinity_key``).
        self.prefix_routing = prefix_routing
        #: Tag images with their content hash as vLLM's ``uuid``: "auto" when the servers are vLLM.
        self.image_uuids = image_uuids
        #: How JSON schemas are sent now; "auto" steps down when a server rejects a form.
        self.json_mode: JsonMode = "none" if json_schema == "off" else "json_schema"
        #: HTTP calls sent to each base URL (retries and extra draws included), over all runs.
        self.calls_per_endpoint: Counter[str] = Counter()
        #: The ``system_fingerprint`` values replies carried, counted (servers that send one).
        self.system_fingerprints: Counter[str] = Counter()
        #: Why the fingerprint could not see the server (None when it did, or was not asked).
        self.server_note: str | None = None
        #: What kept the server from being seen: unreachable, refused (401/403), unlisted, unsupported.
        self.server_fault: str | None = None
        self._fingerprint: dict[str, Any] | None = None
        #: The event loop, client and pool every run shares, started on first use (see :class:`Loop`).
        self._shared: Loop | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A loop, thread and client do not travel: an unpickled engine starts its own.
        return {**self.__dict__, "_shared": None}

    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.model!r}, base_url={','.join(self.base_urls)!r})"

    def fingerprint(self) -> dict[str, Any]:
        """Backend, model, revision and what the servers say about the model; not the URLs.

        Without a ``revision``, the first call asks each base URL once (``GET /models``) for the
        model's entry (the only one listed, if none has its name) and keeps the fields in
        :data:`SERVER_FIELDS` as ``server``: the weights' path and context length on vLLM, the
        vocabulary, context and parameter counts on llama.cpp's server, the owner on OpenAI. A
        server that cannot be asked (down, no ``/models``, the model not listed) gives
        ``"server": "unseen"``, and :attr:`server_note` says why.

        What it cannot see: anything a server does not list there, above all the chat template,
        the system prompt and sampling defaults a server adds, and quantization not named in the
        path. ``system_fingerprint`` comes only with replies, too late for a cache key; the engine
        counts the values it sees in :attr:`system_fingerprints`. A given ``revision`` pins the
        fingerprint by hand and the server is not asked: set it to a label of your own, and change
        it whenever you change how the judge is served.
        """
        if self._fingerprint is None:
            fingerprint = {"backend": self.backend, "model": self.model, "revision": self.revision}
            if self.revision is None:
                fingerprint["server"] = self._ask_servers()
            self._fingerprint = fingerprint
        return dict(self._fingerprint)

    def _ask_servers(self) -> Any:
        """Return each base URL's ``/models`` entry for the model (one if they agree), or "unseen"."""
        key = os.environ.get(self.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        entries: set[str] = set()
        asked = ""
        try:
            with httpx.Client(headers=headers, timeout=min(self.timeout, 10.0)) as client:
                for url in self.base_urls:
                    asked = url
                    reply = client.get(f"{url}/models")
                    reply.raise_for_status()
                    listing = reply.json()
                    entry = _model_entry(listing, self.model)
                    if entry is None:
                        served = ", ".join(sorted(str(m.get("id")) for m in _entries(listing))) or "none"
                        raise LookupError(f"{url}/models does not list {self.model!r} (it serves: {served})")
                    entries.add(json.dumps({k: entry[k] for k in SERVER_FIELDS if k in entry}, sort_keys=True))
        except (httpx.HTTPError, ValueError, LookupError) as exc:
            if isinstance(exc, httpx.HTTPStatusError):
                status = exc.response
                note = f"HTTP {status.status_code} {status.reason_phrase} from {exc.request.url}"
            else:
                note = " ".join(f"{type(exc).__name__}: {exc}".split())
                if len(self.base_urls) > 1 and not isinstance(exc, LookupError):  # which of them
                    note = f"{asked}: {note}"
            self.server_note = note.replace(key, "***") if key else note
            self.server_fault = _fault(exc)
            return "unseen"
        found = [json.loads(e) for e in sorted(entries)]
        return found[0] if len(found) == 1 else found

    def check(self) -> None:
        """Refuse, before any work, a server that cannot be reached, refuses the key, or lacks the model.

        A server without a usable ``GET /models`` passes: its first replies will tell. With
        ``revision`` set the server is not asked for the fingerprint, so it is asked here.

        Raises:
            EngineError: the message names the server, what went wrong and the fix.
        """
        if self.revision is not None:
            self._ask_servers()
        else:
            self.fingerprint()
        fixes = {
            "unreachable": "start the server, or fix --judge-base-url"
            + (" (or leave that server out of the list)" if len(self.base_urls) > 1 else ""),
            "refused": f"set the API key in ${self.api_key_env} (or choose the variable with api_key_env=)",
            "unlisted": "fix the model name to one the server lists",
        }
        if self.server_fault in fixes:
            where = ", ".join(self.base_urls)
            raise EngineError(
                f"openai:{self.model} at {where} cannot judge: {self.server_note}; {fixes[self.server_fault]}"
            )

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Answer a batch on the engine's loop and wait for it; call ``on_result`` in this thread.

        Works from any thread, with or without an event loop running in it (a running loop waits,
        as for any blocking call). A caller that gives up (an exception in ``on_result``,
        KeyboardInterrupt) cancels its own batch's requests; other callers' go on.

        Raises:
            EngineError: the engine was closed while the batch ran, or ``run`` was called on the
                engine's own loop (await :meth:`arun` there).
        """
        if not requests:
            return []
        shared = self._shared
        if shared is not None and threading.current_thread() is shared.thread:
            raise EngineError(f"{self!r}.run() would wait for its own event loop: await arun() there")
        done: queue.Queue[tuple[int, Response] | None] = queue.Queue()
        future = self._submit(requests, lambda index, response: done.put((index, response)))
        future.add_done_callback(lambda _: done.put(None))
        try:
            while (item := done.get()) is not None:
                if on_result is not None:
                    on_result(*item)
        except BaseException:
            future.cancel()
            raise
        if future.cancelled():
            raise EngineError(f"{self!r} was closed while a batch was running")
        return future.result()

    async def arun(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        """Answer a batch on the engine's loop; call ``on_result`` on the awaiting loop as each request completes.

        Raises:
            EngineError: the engine was closed while the batch ran.
        """
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        shared = self._shared
        if shared is not None and loop is shared.loop:  # already on the engine's loop: nothing to hand over
            return await self._batch(shared, requests, on_result)
        done: asyncio.Queue[tuple[int, Response] | None] = asyncio.Queue()

        def deliver(index: int, response: Response) -> None:  # on the engine's loop: hand over to this one
            loop.call_soon_threadsafe(done.put_nowait, (index, response))

        future = asyncio.wrap_future(self._submit(requests, deliver))
        future.add_done_callback(lambda _: done.put_nowait(None))
        try:
            while (item := await done.get()) is not None:
                if on_result is not None:
                    on_result(*item)
        except BaseException:
            future.cancel()
            raise
        if future.cancelled():
            raise EngineError(f"{self!r} was closed while a batch was running")
        return future.result()

    def close(self) -> None:
        """Stop the engine's loop and close its HTTP client; a later run starts them again.

        Batches still running are cancelled (their callers get an :class:`EngineError`).
        """
        shared = self._shared
        if shared is not None:
            shared.stop()

    def sends_image_uuids(self) -> bool:
        """Whether images go with their content hash as ``uuid``: "on", or "auto" and every server is vLLM.

        "auto" knows the servers from the fingerprint (``GET /models``: vLLM lists its models as
        ``owned_by: "vllm"``); with a ``revision`` set they are not asked, so set "on" for vLLM.
        Other servers may refuse a field they do not know, so "auto" sends it to vLLM alone.
        """
        if self.image_uuids != "auto":
            return self.image_uuids == "on"
        server = (self._fingerprint or {}).get("server")
        entries = server if isinstance(server, list) else [server]
        return all(isinstance(e, dict) and e.get("owned_by") == "vllm" for e in entries)

    def server_stats(self) -> dict[str, dict[str, float]]:
        """Return, per base URL, what this process sent it over all runs, close() included.

        Each holds ``requests`` (HTTP calls, retries included), ``retries``, ``failed_calls``,
        ``errors`` (requests that failed there after any retries), ``seconds`` (waiting for replies,
        summed over concurrent calls), ``in_flight`` now and ``peak_in_flight`` since the first run,
        ``marked_down`` (times it left the rotation), ``down`` (out of it now), ``last_error``, and for
        requests with a prefix key ``affine`` (sent to the key's first choice) and ``spilled`` (sent
        here because the first choice was full or out of rotation).
        """
        shared = self._shared
        if shared is None or shared.pid != os.getpid():
            return {url: asdict(EndpointStats()) for url in self.base_urls}
        return {url: asdict(stats) for url, stats in shared.pool.stats.items()}

    def _submit(self, requests: Sequence[Request], on_result: OnResult) -> concurrent.futures.Future[list[Response]]:
        """Schedule a batch on the engine's loop, starting one if this process has none running."""
        with http_loop.LOCK:
            shared = self._shared
            if shared is None or shared.closed or shared.pid != os.getpid():
                # Statistics outlive close(), not a fork: a child counts its own calls.
                kept = shared.pool.stats if shared is not None and shared.pid == os.getpid() else None
                shared = self._shared = Loop(
                    self.base_urls, self.concurrency, self.timeout, kept, affinity=self.prefix_routing
                )
                # An engine dropped without close() ends its loop too; from the collector, without waiting.
                weakref.finalize(self, shared.stop, False)
            return shared.submit(self._batch(shared, requests, on_result))

    async def _batch(self, shared: Loop, requests: Sequence[Request], on_result: OnResult | None) -> list[Response]:
        """Answer a batch concurrently on the engine's loop; call ``on_result`` as each request completes."""
        key = os.environ.get(self.api_key_env, "")
        # Servers without authentication (local vLLM, llama.cpp) get no Authorization header.
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        state = _RunState(shared.client, shared.pool, key, headers, uuids=self.sends_image_uuids())
        out: list[Response] = [Response(error="openai: not run")] * len(requests)
        tasks = [asyncio.create_task(self._indexed(state, i, r)) for i, r in enumerate(requests)]
        try:
            for next_done in asyncio.as_completed(tasks):
                index, response = await next_done
                out[index] = response
                if on_result is not None:
                    on_result(index, response)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return out

    async def _indexed(self, state: _RunState, index: int, request: Request) -> tuple[int, Response]:
        try:
            response = await self._answer(state, request)
        except Exception as exc:  # one bad request (a missing image, an odd reply) must not sink the batch
            response = Response(error=f"openai: {type(exc).__name__}: {exc}")
        if response.error and state.key:
            response = Response(error=response.error.replace(state.key, "***"))
        return index, response

    async def _answer(self, state: _RunState, request: Request) -> Response:
        if isinstance(request.constraint, Choice) and request.constraint.loglik:
            return Response(error="openai: this engine cannot score option log-likelihoods (Choice(loglik=True))")
        if request.has_image and not self.accepts_images:
            return Response(error=f"openai: {self.model} is configured as text-only and cannot read images")
        sampling = request.sampling
        texts: list[str] = []
        prompt_tokens = completion_tokens = 0
        while len(texts) < sampling.n:
            draw = len(texts)
            seed = None if sampling.seed is None else sampling.seed + draw
            reply = await self._complete(state, request, sampling.n - draw, seed)
            if isinstance(reply, _Failure):
                return Response(error=f"openai: {reply.message}")
            if not isinstance(reply.get("choices"), list) or not reply["choices"]:
                return Response(error=f"openai: a reply without choices: {' '.join(str(reply).split())[:300]}")
            if isinstance(reply.get("system_fingerprint"), str):
                self.system_fingerprints[reply["system_fingerprint"]] += 1
            choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
            texts.extend((c.get("message") or {}).get("content") or "" for c in choices)
            usage = reply.get("usage") or {}
            # The prompt is counted once however many calls the draws took, as the other engines do.
            prompt_tokens = prompt_tokens or int(usage.get("prompt_tokens") or 0)
            completion_tokens += int(usage.get("completion_tokens") or 0)
        return Response(
            texts=tuple(texts[: sampling.n]), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )

    async def _complete(
        self, state: _RunState, request: Request, n: int, seed: int | None
    ) -> dict[str, Any] | _Failure:
        """Make one chat completion, stepping down the JSON schema form while the server rejects it."""
        while True:
            mode = self.json_mode if isinstance(request.constraint, JsonSchema) else "none"
            body = self._body(state, request, n, seed, mode)
            reply = await self._post(state, body, request.affinity_key())
            if isinstance(reply, _Failure) and reply.rejected_format and self.json_schema == "auto" and mode != "none":
                if self.json_mode == mode:  # concurrent requests may have stepped down already
                    self.json_mode = _NEXT_JSON_MODE[mode]
                continue
            return reply

    def _body(self, state: _RunState, request: Request, n: int, seed: int | None, mode: JsonMode) -> dict[str, Any]:
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [message_payload(m, state.images, state.uuids) for m in request.messages],
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "n": n,
        }
        if seed is not None:
            body["seed"] = seed
        if isinstance(request.constraint, JsonSchema) and mode != "none":
            schema = json.loads(request.constraint.schema_json)
            if mode == "json_schema":
                spec = {"name": "answer", "schema": schema, "strict": _strict_ok(schema)}
                body["response_format"] = {"type": "json_schema", "json_schema": spec}
            else:
                body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    async def _post(self, state: _RunState, body: dict[str, Any], key: str | None = None) -> dict[str, Any] | _Failure:
        """POST one body, retrying transient failures; return the reply's JSON or the last failure.

        ``key`` (the request's prefix key) sends it to the server of its key (:class:`Pool`).

        A server that cannot be reached (or says it is unavailable) leaves the pool's rotation, and
        the retry goes at once to another server in rotation; other retries wait a backoff.
        """
        failure = _Failure("no attempt made", retryable=True)
        failed_at: str | None = None
        for attempt in range(self.max_retries + 1):
            if attempt and not (failure.server_down and state.pool.in_rotation(avoid=failed_at)):
                await asyncio.sleep(self._delay(attempt - 1, failure.retry_after))
            async with state.pool.slot(retry=attempt > 0, avoid=failed_at, key=key) as url:
                self.calls_per_endpoint[url] += 1
                try:
                    reply = await state.client.post(f"{url}/chat/completions", json=body, headers=state.headers)
                except httpx.TransportError as exc:
                    # Bad URLs and local protocol misuse will fail the same way again.
                    fatal = isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError)
                    message = f"{type(exc).__name__} at {url}: {exc}".rstrip(": ")
                    failure = _Failure(message, retryable=not fatal, server_down=not fatal)
                else:
                    if reply.status_code == 200:
                        try:
                            data = reply.json()
                        except ValueError:
                            data = None
                        if isinstance(data, dict):
                            state.pool.answered(url)
                            return data
                        # A garbled body (cut short, empty, or a proxy's null or list) is as transient as a 5xx.
                        failure = _Failure(f"reply from {url} is not a JSON object", retryable=True)
                    else:
                        failure = _http_failure(reply, url, "response_format" in body)
                # recorded while the slot is held: a probe's verdict is in before the next call picks
                state.pool.answered(url, self._redact(state, failure.message), failure.server_down)
            failed_at = url
            if not failure.retryable:
                break
        else:
            failure = _Failure(f"{failure.message} (gave up after {self.max_retries + 1} attempts)", retryable=False)
        state.pool.stats[url].errors += 1
        return failure

    @staticmethod
    def _redact(state: _RunState, text: str) -> str:
        return text.replace(state.key, "***") if state.key else text

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # Honour the server's wait, plus a little jitter so clients told the same do not collide.
            return min(retry_after, RETRY_AFTER_CEILING) + random.uniform(0.0, self.backoff)
        return backoff_delay(attempt, self.backoff, self.backoff_cap)


def _fault(exc: Exception) -> str:
    """Classify why ``GET /models`` failed: unreachable, refused (the key), unlisted (no such model), unsupported."""
    if isinstance(exc, httpx.TransportError):
        return "unreachable"
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
        return "refused"
    if isinstance(exc, LookupError):
        return "unlisted"
    return "unsupported"


def _entries(listing: Any) -> list[dict[str, Any]]:
    """Return the model entries of a ``GET /models`` reply."""
    items = listing.get("data") if isinstance(listing, dict) else None
    return [m for m in items if isinstance(m, dict)] if isinstance(items, list) else []


def _model_entry(listing: Any, model: str) -> dict[str, Any] | None:
    """Return the entry of ``model`` in a ``GET /models`` reply, or the only entry, or None."""
    entries = _entries(listing)
    named = [m for m in entries if m.get("id") == model]
    # llama.cpp's servers answer every request with their one model, whatever it is called.
    return named[0] if named else (entries[0] if len(entries) == 1 else None)


def _http_failure(reply: httpx.Response, url: str, sent_format: bool) -> _Failure:
    """Classify an HTTP error reply: retryable or not, a wait asked for, a rejected response_format."""
    status = reply.status_code
    detail = _server_message(reply)
    lowered = detail.lower()
    rejected = sent_format and status not in (408, 429) and ("response_format" in lowered or "json_schema" in lowered)
    retry_after = parse_retry_after(reply.headers.get("retry-after")) if status in (429, 503) else None
    return _Failure(
        f"HTTP {status} from {url}: {' '.join(detail.split())[:300]}",
        retryable=is_retryable_status(status) and not rejected,
        retry_after=retry_after,
        rejected_format=rejected,
        server_down=status in (502, 503, 504),
    )


def _server_message(reply: httpx.Response) -> str:
    """Return the error message in a reply body, as OpenAI, vLLM, llama.cpp or FastAPI word it."""
    try:
        data = reply.json()
    except ValueError:
        return reply.text.strip() or reply.reason_phrase
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)
    return reply.text.strip()


def _strict_ok(schema: Any) -> bool:
    """Whether OpenAI's strict mode would take ``schema``: every object closed, all keys required."""
    if isinstance(schema, list):
        return all(_strict_ok(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is not False or set(schema.get("required", ())) != set(properties):
            return False
    return all(_strict_ok(v) for k, v in schema.items() if k not in ("required", "enum", "const", "default"))
