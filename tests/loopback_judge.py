"""A small OpenAI-compatible judge on 127.0.0.1 for fault tests: deterministic replies, counted requests.

``LoopbackJudge(reply, delay)`` serves ``POST /v1/chat/completions`` from a thread. Each reply
is ``reply(messages)``, a function of the request's messages only, so two runs over the same
captions get the same answers. It records every request it received (by a hash of its
messages), so a test can tell how many judge calls a run repeated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[list[dict[str, Any]]], str]


def letter_by_hash(messages: list[dict[str, Any]]) -> str:
    """Answer A or B, chosen by a hash of the last message: stable, and right about half the time."""
    text = json.dumps(messages[-1], sort_keys=True)
    return "AB"[hashlib.sha256(text.encode()).digest()[0] % 2]


class LoopbackJudge:
    """An OpenAI-compatible chat server in a background thread."""

    def __init__(self, reply: Reply = letter_by_hash, delay: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.received: Counter[str] = Counter()
        #: The Authorization headers the server saw, so a test can check a key was sent.
        self.authorization: set[str] = set()
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages = body["messages"]
                with judge.lock:
                    judge.authorization.add(self.headers.get("Authorization", ""))
                    judge.received[hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()] += 1
                time.sleep(judge.delay)
                content = judge.reply(messages)
                payload = json.dumps(
                    {
                        "id": "loopback",
                        "object": "chat.completion",
                        "model": body.get("model", "loopback"),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client was killed mid-request
                    self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The server's OpenAI base URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> LoopbackJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
