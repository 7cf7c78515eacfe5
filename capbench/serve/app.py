"""The HTTP routes of the reward service (FastAPI), its access check and its one-line-per-request log.

Routes: ``POST /v1/score`` (capbench's contract), ``POST /openrlhf/{reward}`` (OpenRLHF's
``--remote_rm_url``), ``GET /health`` and ``GET /metrics`` (Prometheus). The contract and its
examples are in docs/serve.md.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

import capbench
from capbench.serve import openrlhf
from capbench.serve.batcher import Answer, Batcher
from capbench.serve.images import RequestError
from capbench.serve.items import Item, parse_json, parse_score_request
from capbench.serve.service import Service
from capbench.serve.stats import CONTENT_TYPE, Stats

#: Routes whose latency the quantiles measure.
SCORING = ("/v1/score", "/openrlhf")


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@dataclass
class _State:
    """What the routes share: the service, its batcher and counters, the log, the judges' fingerprints."""

    service: Service
    batcher: Batcher
    stats: Stats
    write: Callable[[str], None]
    judges: dict[str, Any]
    url: str | None

    def event(self, name: str, **fields: Any) -> None:
        """Log one event line (ready, stopped, error)."""
        self.write(json.dumps({"time": _now(), "event": name, **fields}, default=str))


def create_app(service: Service, log: Callable[[str], None] | None = None, url: str | None = None) -> FastAPI:
    """Build the service's ASGI app around a loaded :class:`Service`.

    Args:
        service: The judges and metrics.
        log: Receives each JSON log line (default: stderr).
        url: Where the app is served, for the start-up log line.
    """
    config = service.setup.config
    stats = Stats()
    batcher = Batcher(service, config.batch_window_ms / 1000.0, config.max_queue, service.max_batches, stats.batch)
    app = FastAPI(
        title="capbench reward service",
        version=capbench.__version__,
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.serve = _State(service, batcher, stats, log or _stderr, service.fingerprints(), url)
    app.add_exception_handler(RequestError, _refused)  # type: ignore[arg-type]
    app.middleware("http")(_frame)
    app.add_api_route("/health", _health, methods=["GET"])
    app.add_api_route("/metrics", _metrics, methods=["GET"], response_model=None)
    app.add_api_route("/v1/score", _score, methods=["POST"])
    app.add_api_route("/openrlhf/{reward}", _openrlhf, methods=["POST"], response_model=None)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: _State = app.state.serve
    catalog = state.service.catalog
    state.batcher.start()
    labels = {role: f"{j.get('backend')}:{j.get('model')}" for role, j in state.judges.items()}
    state.event("ready", url=state.url, judges=labels, rewards=sorted(catalog.rewards), benchmark=catalog.benchmark,
                token=state.service.setup.token is not None, max_batches=state.batcher.max_batches)  # fmt: skip
    try:
        yield
    finally:
        await state.batcher.stop()  # every accepted request is answered first
        state.service.close()
        state.event("stopped", usage=state.service.usage())


async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"detail": exc.message}, exc.status, headers=exc.headers)


async def _frame(request: Request, call_next: Callable[[Request], Any]) -> Response:
    """Check the token, answer, count, and log one line per request."""
    state: _State = request.app.state.serve
    started = time.perf_counter()
    route = _route(request.url.path)
    request.state.items = 0
    response = _refusal(request, route, state.service.setup.token)
    if response is None:
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug answers 500 with its type; the traceback goes to the log only
            state.event("error", path=request.url.path, error="".join(traceback.format_exception(exc))[-4000:])
            response = JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server's log"}, 500)
    seconds = time.perf_counter() - started
    state.stats.request(route, response.status_code, seconds, route in SCORING)
    client = f"{request.client.host}:{request.client.port}" if request.client else None
    state.write(json.dumps({
        "time": _now(), "method": request.method, "path": request.url.path, "status": response.status_code,
        "items": request.state.items, "seconds": round(seconds, 4), "client": client,
    }))  # fmt: skip
    return response


async def _health(request: Request) -> dict[str, Any]:
    state: _State = request.app.state.serve
    catalog = state.service.catalog
    return {
        "status": "ok",
        "judges": state.judges,
        "rewards": sorted(catalog.rewards),
        "metrics": sorted(catalog.needs),
        "benchmark": catalog.benchmark,
        "version": capbench.__version__,
    }


async def _metrics(request: Request) -> PlainTextResponse:
    state: _State = request.app.state.serve
    batcher = state.batcher
    text = state.stats.exposition(state.service.usage(), batcher.waiting, batcher.in_flight, batcher.batches)
    return PlainTextResponse(text, media_type=CONTENT_TYPE)


async def _judged(request: Request, items: list[Item]) -> Answer:
    """Queue a request's items and wait for their results (at most --timeout)."""
    state: _State = request.app.state.serve
    timeout = state.service.setup.config.timeout
    request.state.items = len(items)
    future = state.batcher.submit(items)
    try:
        results, usage = await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # its outcome is nobody's now
        raise RequestError(
            504,
            f"scoring took longer than this server's --timeout {timeout:g} s; the judgments made are cached, "
            "so the same request sent again is answered sooner",
        ) from None
    unscored = sum(v is None for r in results for v in [*r["rewards"].values(), *r["metrics"].values()])
    state.stats.scored(len(items), unscored)
    return results, usage


async def _score(request: Request) -> dict[str, Any]:
    """``POST /v1/score``: capbench's own contract (docs/serve.md)."""
    state: _State = request.app.state.serve
    started = time.perf_counter()
    service = state.service
    body = await _body(request, service.setup.config.max_body_bytes)
    items = await asyncio.to_thread(lambda: parse_score_request(parse_json(body), service.catalog, service.images))
    results, usage = await _judged(request, items)
    return {"results": results, "usage": {**usage, "seconds": round(time.perf_counter() - started, 4)}}


async def _openrlhf(reward: str, request: Request) -> JSONResponse:
    """``POST /openrlhf/{reward}``: OpenRLHF's remote reward contract."""
    service = request.app.state.serve.service
    catalog = service.catalog
    if reward not in catalog.rewards:
        raise RequestError(
            404,
            f"unknown reward {reward!r}; POST to /openrlhf/<reward>, one of: {', '.join(sorted(catalog.rewards))}",
        )
    body = await _body(request, service.setup.config.max_body_bytes)
    items = await asyncio.to_thread(lambda: openrlhf.openrlhf_items(parse_json(body), reward, catalog, service.images))
    results, _ = await _judged(request, items)
    status, answer = openrlhf.answer(reward, results)
    return JSONResponse(answer, status)


def _route(path: str) -> str:
    """The route a path belongs to, as the request counters label it."""
    if path in ("/v1/score", "/health", "/metrics"):
        return path
    return "/openrlhf" if path.startswith("/openrlhf/") else "other"


def _refusal(request: Request, route: str, token: str | None) -> JSONResponse | None:
    """401 when the server has a token and the request does not carry it (``/health`` is open)."""
    if token is None or route == "/health":
        return None
    header = request.headers.get("authorization")
    given: str | None = None
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return _unauthorized("the Authorization header must be 'Bearer <token>'", "invalid_request")
        given = value.strip()
    elif route == "/openrlhf":  # OpenRLHF sends no headers: its URL may carry ?token=
        given = request.query_params.get("token")
    if given is None:
        return _unauthorized(
            "this server needs a bearer token: send 'Authorization: Bearer <token>' (the token is in the server's "
            "token environment variable, --token-env)",
            None,
        )
    if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
        return _unauthorized("bearer token not accepted", "invalid_token")
    return None


def _unauthorized(message: str, error: str | None) -> JSONResponse:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return JSONResponse({"detail": message}, 401, headers={"WWW-Authenticate": challenge})


async def _body(request: Request, limit: int) -> bytes:
    """Read a JSON request body of at most ``limit`` bytes.

    Raises:
        RequestError: 415 for another content type, 413 for a body over the limit.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise RequestError(415, f"Content-Type must be application/json, not {content_type or 'none'!r}")
    declared = request.headers.get("content-length", "")
    too_big = f"body is over this server's limit of {limit / 1e6:g} MB (--max-body-mb); send fewer or smaller items"
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
