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
  ``tests/loopback_judge.letter_by_hash``: stable across runs, so CaptionQA and CapRL rewards work;
- with ``schema_answers``, a request that carries a JSON schema (``response_format``) is answered
  with JSON that satisfies it, as capbench's fact stages ask: the caption's facts (one per 8 words
  of the caption in the last message, at most the schema's ``maxItems`` or 16), a verdict or a match for each
  numbered fact (``minItems`` of the schema), 1-10 ratings; the flags and ratings are chosen by a
  hash of the request, so the answers are stable across runs and the BalCapRL rewards score.

Tokens are counted roughly: the prompt as whitespace-separated words of the messages' text, the
output as one token per 4 characters of the reply (at least 1). Every request is counted by a
hash of its messages, so a caller can tell whether any judge request was sent twice; ``GET
/stats`` returns the counts (and ``busy_s``, the modelled seconds of every request served).

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
``schema_answers``            false    answer JSON-schema requests with JSON that satisfies them
``port``                      0        the port on 127.0.0.1 (0: any free one; a restarted judge
                                       can take its old port back)
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
    "schema_answers": False,
    "port": 0,
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


def output_tokens(text: str) -> int:
    """Count a reply's tokens roughly: one per 4 characters, at least 1."""
    return max(1, len(text) // 4)


def request_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The JSON schema a chat-completions request asks its reply to follow, or None."""
    form = body.get("response_format")
    if not isinstance(form, Mapping):
        return None
    if form.get("type") == "json_schema":
        spec = form.get("json_schema")
        return spec.get("schema") if isinstance(spec, Mapping) else None
    return form.get("schema") if isinstance(form.get("schema"), Mapping) else None


def _last_text(messages: list[dict[str, Any]]) -> str:
    content = messages[-1].get("content", "") if messages else ""
    if not isinstance(content, str):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    # The caption between capbench's <caption> tags, where the prompt has them.
    start, end = content.rfind("<caption>"), content.rfind("</caption>")
    return content[start + len("<caption>") : end] if 0 <= start < end else content


def schema_answer(schema: Mapping[str, Any], messages: list[dict[str, Any]]) -> Any:
    """JSON that satisfies one of capbench's fact-stage schemas (or any simple one), chosen by a hash.

    An array with a fixed length (``minItems == maxItems``: one entry per numbered fact) gets that
    many entries; the facts array gets one fact per 8 words of the last message (at least
    ``minItems``, at most ``maxItems`` or 16). Booleans and integers are drawn from a hash of the
    last message and the entry's place, as is a string with an ``enum``; an ``id`` counts from 1; a
    ``reference`` names fact 1 or none.
    """
    text = _last_text(messages)
    seed = hashlib.sha256(text.encode()).digest()

    def bit(*where: Any) -> int:
        return hashlib.sha256(seed + repr(where).encode()).digest()[0]

    def value(node: Mapping[str, Any], path: tuple[Any, ...]) -> Any:
        if "anyOf" in node:
            options = list(node["anyOf"])
            return value(options[bit(path, "any") % len(options)], path)
        kind = node.get("type")
        if kind == "object":
            props = node.get("properties", {})
            return {name: value(sub, (*path, name)) for name, sub in props.items()}
        if kind == "array":
            low, high = int(node.get("minItems", 0)), node.get("maxItems")
            if high is not None and int(high) == low:
                count = low
            else:
                words = text.split()
                count = max(low, 1, min(int(high) if high is not None else 16, len(words) // 8))
            return [entry(node.get("items", {}), (*path, i), i) for i in range(count)]
        if kind == "boolean":
            return bit(path) % 10 < 7  # mostly true, as a judge of decent captions says
        if kind == "integer":
            choices = node.get("enum")
            return choices[bit(path) % len(choices)] if choices else 1
        if kind == "null":
            return None
        if kind == "string":  # one of its enum (an arena verdict), else a placeholder
            choices = node.get("enum")
            return choices[bit(path) % len(choices)] if choices else "x"
        return None

    def entry(node: Mapping[str, Any], path: tuple[Any, ...], index: int) -> Any:
        if node.get("type") != "object":
            return value(node, path)
        out = value(node, path)
        words = text.split()
        if "id" in out:
            out["id"] = index + 1
        if "reference" in out:
            out["reference"] = 1 if bit(path, "ref") % 2 else None
        if "fact" in out:
            chunk = words[index * 8 : index * 8 + 8] or ["something"]
            out["fact"] = " ".join(chunk)[:300]
            if "object" in out:
                out["object"] = chunk[0][:40]
        return out

    return value(schema, ())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted judge takes its port back at once
    # The listen backlog, read when the server binds: many clients connect at once (the default, 5,
    # drops connections under a burst, which clients see as read errors).
    request_queue_size = 512


class LatencyJudge:
    """The judge, serving from a thread: ``base_url``, ``received`` (counts by message hash), ``stats()``."""

    def __init__(self, settings: Mapping[str, Any] | str | Path | None = None) -> None:
        self.settings = load_settings(settings)
        self.slots = threading.Semaphore(int(self.settings["concurrency"]))
        self.received: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.busy = 0.0  # modelled seconds of every request served, queueing left out
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", int(self.settings["port"])), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The server's OpenAI base URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stats(self) -> dict[str, Any]:
        """Requests received, distinct ones, those received more than once, the most in flight at once, busy seconds."""
        with self.lock:
            return {
                "received": sum(self.received.values()),
                "distinct": len(self.received),
                "repeated": sum(c - 1 for c in self.received.values()),
                "max_in_flight": self.max_in_flight,
                "busy_s": round(self.busy, 4),
            }

    def reply(self, messages: list[dict[str, Any]], schema: Mapping[str, Any] | None = None) -> tuple[str, float]:
        """Answer one request as a served model would: wait for a slot, take the modelled time, answer."""
        key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        s = self.settings
        if schema is not None and s["schema_answers"]:
            text = json.dumps(schema_answer(schema, messages))
        else:
            letters = str(s["letters"])
            text = letters[hashlib.sha256(json.dumps(messages[-1], sort_keys=True).encode()).digest()[0] % len(letters)]
        with self.lock:
            self.received[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            with self.slots:
                with self.lock:
                    excess = max(0, self.in_flight - s["concurrency"]) / s["concurrency"]
                seconds = s["base_s"] + s["per_prompt_token_s"] * words(messages)
                seconds += s["per_output_token_s"] * output_tokens(text)
                seconds *= 1 + s["overload_factor"] * excess
                with self.lock:
                    self.busy += seconds
                time.sleep(seconds)
        finally:
            with self.lock:
                self.in_flight -= 1
        return text, seconds

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a served model's HTTP stack
            # The headers and the body go out in two writes: without TCP_NODELAY, Nagle's algorithm
            # holds the body until the client's delayed ACK, ~40 ms a reply that no served model adds.
            disable_nagle_algorithm = True

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
                text, _ = judge.reply(messages, request_schema(body))
                prompt, output = words(messages), output_tokens(text)
                n = max(1, int(body.get("n") or 1))
                self._send(
                    {
                        "id": "latency",
                        "object": "chat.completion",
                        "model": body.get("model", judge.settings["model"]),
                        "choices": [
                            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                            for i in range(n)
                        ],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": output,
                            "total_tokens": prompt + output,
                        },
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
