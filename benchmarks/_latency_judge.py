"""An OpenAI-compatible judge on 127.0.0.1 that behaves like a served model: latency, a concurrency limit, overload.

``LatencyJudge(settings)`` serves ``POST /v1/chat/completions`` (and ``GET /v1/models``, listing
its one model) from a background thread. Each request:

- waits for one of ``concurrency`` slots (requests beyond it queue, as on a served model);
- once it has a slot, takes ``base_s + per_prompt_token_s × prompt tokens + per_output_token_s ×
  output tokens`` seconds, times ``1 + overload_factor × max(0, in_flight − concurrency) /
  concurrency``, where ``in_flight`` counts every request received and not yet answered (waiting
  ones included): a server with more work than slots gets slower per request, so its throughput
  falls when overloaded;
- is answered with a letter (A–D) chosen by a hash of its last message, as
  ``tests/loopback_judge.letter_by_hash``: stable across runs, so CaptionQA and CapRL rewards work.

Tokens are counted roughly, as whitespace-separated words of the messages' text (the prompt) and
of the reply (the output). Every request is counted by a hash of its messages, so a caller can
tell whether any judge request was sent twice; ``GET /stats`` returns the counts.

Settings (a dict, or a JSON or YAML file holding one; unknown keys are refused):

============================  =======  ==========================================================
key                           default  meaning
============================  =======  ==========================================================
``model``                     latency  the model name it serves (and lists at ``/v1/models``)
``base_s``                    0.02     seconds every request takes
``per_prompt_token_s``        0.0001   seconds per prompt token (word)
``per_output_token_s``        0.01     seconds per output token (word)
``concurrency``               16       requests served at once; more wait for a slot
``overload_factor``           0.5      latency growth per ``concurrency`` requests in excess
``letters``                   ABCD     the letters a reply is chosen from
============================  =======  ==========================================================

Run alone (``python benchmarks/_latency_judge.py [--config FILE]``), it prints one JSON line
``{"base_url": ..., "settings": ...}`` and serves until its standard input closes, so a benchmark
can run it in a process of its own (off the GIL of the service it loads).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "model": "latency",
    "base_s": 0.02,
    "per_prompt_token_s": 0.0001,
    "per_output_token_s": 0.01,
    "concurrency": 16,
    "overload_factor": 0.5,
    "letters": "ABCD",
}


def load_settings(source: Mapping[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """Return the judge's settings: the defaults updated from a dict or a JSON/YAML file.

    Raises:
        ValueError: an unknown key, or a value out of range.
    """
    given: Mapping[str, Any] = {}
    if isinstance(source, (str, Path)):
        text = Path(source).read_text()
        if str(source).endswith((".yaml", ".yml")):
            import yaml

            given = yaml.safe_load(text) or {}
        else:
            given = json.loads(text)
    elif source is not None:
        given = source
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"latency judge: unknown setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **given}
    if int(settings["concurrency"]) < 1 or not settings["letters"]:
        raise ValueError("latency judge: concurrency must be at least 1 and letters not empty")
    for key in ("base_s", "per_prompt_token_s", "per_output_token_s", "overload_factor"):
        if float(settings[key]) < 0:
            raise ValueError(f"latency judge: {key} must be 0 or more, not {settings[key]}")
    return settings


def words(messages: list[dict[str, Any]]) -> int:
    """Count the prompt's tokens roughly: the words of every text part of every message."""
    count = 0
    for message in messages:
        content = message.get("content", "")
        parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content if isinstance(p, dict)]
        count += sum(len(str(part).split()) for part in parts)
    return count


class LatencyJudge:
    """The judge, serving from a thread: ``base_url``, ``received`` (counts by message hash), ``stats()``."""

    def __init__(self, settings: Mapping[str, Any] | str | Path | None = None) -> None:
        self.settings = load_settings(settings)
        self.slots = threading.Semaphore(int(self.settings["concurrency"]))
        self.received: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.request_queue_size = 512  # the listen backlog: many clients connect at once
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The server's OpenAI base URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stats(self) -> dict[str, Any]:
        """Requests received, distinct ones, those received more than once, and the most in flight at once."""
        with self.lock:
            return {
                "received": sum(self.received.values()),
                "distinct": len(self.received),
                "repeated": sum(c - 1 for c in self.received.values()),
                "max_in_flight": self.max_in_flight,
            }

    def reply(self, messages: list[dict[str, Any]]) -> tuple[str, float]:
        """Answer one request as a served model would: wait for a slot, take the modelled time, name a letter."""
        key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        letters = str(self.settings["letters"])
        letter = letters[hashlib.sha256(json.dumps(messages[-1], sort_keys=True).encode()).digest()[0] % len(letters)]
        s = self.settings
        with self.lock:
            self.received[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            with self.slots:
                with self.lock:
                    excess = max(0, self.in_flight - s["concurrency"]) / s["concurrency"]
                seconds = s["base_s"] + s["per_prompt_token_s"] * words(messages) + s["per_output_token_s"] * 1
                seconds *= 1 + s["overload_factor"] * excess
                time.sleep(seconds)
        finally:
            with self.lock:
                self.in_flight -= 1
        return letter, seconds

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a served model's HTTP stack

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send({"object": "list", "data": [{"id": judge.settings["model"], "object": "model"}]})
                elif self.path.rstrip("/") == "/stats":
                    self._send(judge.stats())
                else:
                    self._send({"error": {"message": f"no route {self.path}"}}, 404)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages = body["messages"]
                letter, _ = judge.reply(messages)
                prompt = words(messages)
                self._send(
                    {
                        "id": "latency",
                        "object": "chat.completion",
                        "model": body.get("model", judge.settings["model"]),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": letter}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1},
                    }
                )

            def _send(self, obj: Any, status: int = 200) -> None:
                payload = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client went away
                    self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:  # thousands of requests: no access log
                pass

        return Handler

    def __enter__(self) -> LatencyJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="a JSON or YAML file of settings (see the module's docstring)")
    args = parser.parse_args()
    with LatencyJudge(args.config) as judge:
        print(json.dumps({"base_url": judge.base_url, "settings": judge.settings}), flush=True)
        sys.stdin.read()  # serve until the parent closes our standard input (or exits)


if __name__ == "__main__":
    main()
