"""Faults around the reward service (`capbench serve`): its judge killed mid-step, itself killed mid-step, bad requests.

Usage: python benchmarks/serve_faults.py
Writes benchmarks/results/serve_faults.json and .md.

Every part is a real process of its own on 127.0.0.1: the judge is benchmarks/_latency_judge.py (an
OpenAI-compatible server with latency, settings in :data:`JUDGE`), the service is ``python -m
capbench serve`` (judge ``openai:latency``, answer mode letter), each with a fresh
``CAPBENCH_HOME`` (and so a fresh judge-call cache) per scenario. The items are capbench-mini's
samples with captions of their own (benchmarks/serve_load.py's ``make_items``).

1. **The judge killed mid-step.** A request of :data:`JUDGED` items for CapRL's QA utility is
   sent; once the judge has received a third of its calls, the judge is SIGKILLed. Checked: the
   answer is a 200 whose items are either scored or null with a named reason (never a 0 with an
   error, never a 500); a request sent while the judge is down gets the same clean failure; a
   judge restarted on the same port then scores both requests' items, and is asked exactly the
   calls that had failed (failed calls are not cached; answered ones are).
2. **The service killed mid-step.** capbench-rl's ``ServiceReward`` (TRL's reward function
   against the service) scores :data:`ROLLOUTS` rollouts for CaptionQA; once the judge has
   received a third of the calls, the service is SIGKILLed and started again on the same port
   with the same cache. Checked: the client retries and gets every reward; the judge (which
   counts requests by a hash of their messages) was asked again only the calls it had received
   and the killed service had not cached (received at the kill − cache entries after it), so
   nothing the cache had was judged twice; the same items sent again are all cache hits, with
   the same rewards.
3. **Malformed requests.** Every kind in tests/test_serve.py's ``MALFORMED`` and ``UNREADABLE``
   lists, sent to a service with the same settings as that file's strict server (a token, a
   benchmark, an image folder, small limits): each must get its 4xx and a message holding the
   listed words; none a 500. Then a good request is scored.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the malformed-request lists of tests/test_serve.py

from _report import save  # noqa: E402
from serve_load import make_items  # noqa: E402

#: The judge server's latency model: slow enough that a kill lands while a step is being judged.
JUDGE = {"base_s": 0.2, "per_prompt_token_s": 0.0001, "per_output_token_s": 0.01, "concurrency": 16}
#: The service's openai engine: one retry, soon, so a judge that is down fails a call in about a second.
ENGINE_OPTIONS = {"concurrency": 16, "max_retries": 1, "backoff": 0.2, "timeout": 30}
JUDGED = 48  # items of the request the judge dies under (CapRL, 4 questions each)
ROLLOUTS = 32  # rollouts scored while the service dies (CaptionQA: every question of the sample)
CAPRL_SAMPLES = 4


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Judge:
    """benchmarks/_latency_judge.py in a process of its own, on a fixed port so a restart takes it back."""

    def __init__(self, folder: Path, port: int) -> None:
        config = folder / "judge.json"
        config.write_text(json.dumps({**JUDGE, "port": port}))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_latency_judge.py"), "--config", str(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.ready = json.loads(self.proc.stdout.readline())
        self.base_url: str = self.ready["base_url"]

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.base_url.removesuffix("/v1") + "/stats", timeout=10).json()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)


class Service:
    """``python -m capbench serve`` in a process of its own; its log lines are kept as they come."""

    def __init__(self, home: Path, port: int, args: list[str], env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "capbench", "serve", "--port", str(port), *args]
        environ = {**os.environ, "CAPBENCH_HOME": str(home), **(env or {})}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environ)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(180):
            self.proc.kill()
            raise RuntimeError("capbench serve did not start:\n" + "\n".join(self.lines[-20:]))
        self.url = f"http://127.0.0.1:{port}"
        self.start_seconds = round(time.perf_counter() - self.started, 2)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if '"event": "ready"' in line:
                self.ready.set()
        self.ready.set()  # it exited: the waiter looks at the lines

    def statuses(self) -> list[int]:
        """The status of every request it logged."""
        return [json.loads(line)["status"] for line in self.lines if line.startswith("{") and '"status"' in line]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM; return the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def judge_args(base_url: str, *more: str) -> list[str]:
    options = [x for k, v in ENGINE_OPTIONS.items() for x in ("--judge-opt", f"{k}={v}")]
    return ["--judge", "openai:latency", "--judge-base-url", base_url, *options, "--answer-mode", "letter", *more]


def wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting")
        time.sleep(0.05)


def post(url: str, body: Any, **kwargs: Any) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = httpx.post(url + "/v1/score", json=body, timeout=300, **kwargs)
    return response, round(time.perf_counter() - started, 2)


def outcome(response: httpx.Response, reward: str) -> dict[str, Any]:
    """Count an answer's items: scored, failed with a reason, and silent (a 0 with an error, a null without)."""
    if response.status_code != 200:
        return {"status": response.status_code, "detail": response.text[:300]}
    body = response.json()
    results = body["results"]
    scored = [r for r in results if isinstance(r["rewards"].get(reward), float) and not r["errors"]]
    failed = [r for r in results if r["rewards"].get(reward) is None and r["errors"].get(reward)]
    reasons = sorted({r["errors"][reward] for r in failed})
    return {
        "status": 200,
        "items": len(results),
        "scored": len(scored),
        "failed_with_reason": len(failed),
        "silent": len(results) - len(scored) - len(failed),
        "usage": body["usage"],
        "reasons": reasons[:3],
        "rewards": {r["id"]: r["rewards"].get(reward) for r in results},
    }


def judge_killed(folder: Path) -> dict[str, Any]:
    """Scenario 1: the judge dies under a request, the service answers and keeps serving, a new judge is used."""
    port = free_port()
    judge = Judge(folder, port)
    service = Service(folder / "home-1", free_port(), judge_args(judge.base_url, "--caprl-samples", str(CAPRL_SAMPLES)))
    reward = "caprl_qa_utility"
    step = {"rewards": [reward], "items": make_items(JUDGED, "judge-killed")}
    down = {"rewards": [reward], "items": make_items(8, "judge-down")}
    answers: dict[str, Any] = {}
    try:
        sender = threading.Thread(target=lambda: answers.update(step=post(service.url, step)))
        sender.start()
        calls = JUDGED * CAPRL_SAMPLES
        wait_until(lambda: judge.stats()["received"] >= calls // 3)
        received = judge.stats()["received"]
        judge.kill()
        sender.join(300)
        killed_answer, killed_seconds = answers["step"]
        health = httpx.get(service.url + "/health", timeout=10).status_code
        down_answer, down_seconds = post(service.url, down)
        judge = Judge(folder, port)  # back on the same port
        again_step, again_seconds = post(service.url, step)
        again_down, down_again_seconds = post(service.url, down)
        asked_again = judge.stats()["received"]
        metrics = httpx.get(service.url + "/metrics", timeout=10).text
    finally:
        judge.close()
        code = service.stop()
    first = outcome(killed_answer, reward)
    rows = {
        "killed mid-step": {**first, "seconds": killed_seconds, "judge_received_before_kill": received},
        "while the judge is down": {**outcome(down_answer, reward), "seconds": down_seconds, "health": health},
        "the same step, judge back": {**outcome(again_step, reward), "seconds": again_seconds},
        "the down request, judge back": {**outcome(again_down, reward), "seconds": down_again_seconds},
    }
    failed_calls = first["usage"]["failures"] + rows["while the judge is down"]["usage"]["failures"]
    statuses = service.statuses()
    return {
        "calls_per_step": calls,
        "rows": rows,
        "new_judge_asked": asked_again,
        "failed_calls_before": failed_calls,
        "asked_only_failed_calls": asked_again == failed_calls,
        "unscored_metric": _metric(metrics, "capbench_serve_unscored_total"),
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "exit_code": code,
    }


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def service_killed(folder: Path) -> dict[str, Any]:
    """Scenario 2: the service dies under a ServiceReward call and is started again with the same cache."""
    from capbench_rl.service_client import ServiceReward

    judge = Judge(folder, free_port())
    home, port = folder / "home-2", free_port()
    items = make_items(ROLLOUTS, "service-killed")
    columns = {key: [item[key] for item in items] for key in ("reference_caption", "questions", "domain")}
    columns["sample_id"] = [item["id"] for item in items]
    expected = sum(len(item["questions"]) for item in items)  # CaptionQA asks every question once, by letter
    completions = [item["caption"] for item in items]
    reward = ServiceReward("captionqa", f"http://127.0.0.1:{port}", retries=10, max_wait=300)
    got: dict[str, Any] = {}

    def call() -> None:
        started = time.perf_counter()
        got["rewards"] = asyncio.run(reward([""] * len(items), completions, **columns))
        got["seconds"] = round(time.perf_counter() - started, 2)

    args = judge_args(judge.base_url)
    service = Service(home, port, args)
    try:
        client = threading.Thread(target=call)
        client.start()
        wait_until(lambda: judge.stats()["received"] >= expected // 3)
        service.kill()
        killed_at = time.perf_counter()
        time.sleep(0.5)  # the judge finishes reading what was sent before the kill
        at_kill = judge.stats()
        with sqlite3.connect(home / "cache.sqlite") as db:
            cached = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        service = Service(home, port, args)
        restart_seconds = round(time.perf_counter() - killed_at, 2)
        client.join(300)
        after = judge.stats()
        direct, _ = post(service.url, {"rewards": ["captionqa"], "items": items})
    finally:
        judge.close()
        code = service.stop()
    again = outcome(direct, "captionqa")
    rewards = got.get("rewards", [])
    calls = again["usage"]["cache_hits"]
    lost_in_flight = at_kill["received"] - cached
    return {
        "rollouts": len(items),
        "calls": calls,
        "calls_expected": expected,
        "judge_received_at_kill": at_kill["received"],
        "cache_entries_at_kill": cached,
        "received_not_cached": lost_in_flight,
        "restart_seconds": restart_seconds,
        "service_start_seconds": service.start_seconds,
        "client_seconds": got.get("seconds"),
        "client_rewards": len(rewards),
        "client_none": sum(r is None for r in rewards),
        "judge_received": after["received"],
        "judge_distinct": after["distinct"],
        "judge_repeated": after["repeated"],
        "nothing_cached_judged_twice": after["repeated"] == lost_in_flight and after["distinct"] == calls == expected,
        "resend": {
            "judge_calls": again["usage"]["judge_calls"],
            "cache_hits": calls,
            "same_rewards": [again["rewards"][i["id"]] for i in items] == rewards,
        },
        "exit_code": code,
    }


def malformed(folder: Path) -> dict[str, Any]:
    """Scenario 3: every malformed request kind of tests/test_serve.py, against a strict service process."""
    import test_serve as T

    judge = Judge(folder, free_port())
    root = folder / "images"
    root.mkdir()
    (root / "cat.png").write_bytes(T.PNG)
    (root / "notes.png").write_text("these are notes, not an image")
    args = judge_args(judge.base_url, "--benchmark", "mini", "--images-root", str(root), "--max-items", "4",
                      "--max-queue", "8", "--max-body-mb", "0.05", "--caprl-samples", "2")  # fmt: skip
    service = Service(folder / "home-3", free_port(), args, {"CAPBENCH_SERVE_TOKEN": T.TOKEN})
    rows = []
    try:
        for kind, request, status, words in [*T.MALFORMED, *T.UNREADABLE]:
            response = send(service.url, request, T.TOKEN)
            try:
                detail = str(response.json().get("detail", ""))
            except ValueError:
                detail = response.text
            listed = response.status_code == status and words in detail
            detail = detail.replace(str(folder), "<tmp>")  # the same table on every run
            rows.append({"kind": kind, "expected": status, "status": response.status_code, "detail": detail,
                         "as_listed": listed})  # fmt: skip
        good_body = T._items(T._GOOD, T._item(sample_id="astronaut", caption="An astronaut."))
        good, _ = post(service.url, good_body, headers={"Authorization": f"Bearer {T.TOKEN}"})
    finally:
        judge.close()
        code = service.stop()
    statuses = service.statuses()
    return {
        "rows": rows,
        "kinds": len(rows),
        "as_listed": sum(r["as_listed"] for r in rows),
        "server_errors": sum(s >= 500 for s in statuses),
        "good_request_after": outcome(good, "caprl_qa_utility") | {"rewards": None},
        "exit_code": code,
    }


def send(url: str, request: Any, token: str) -> httpx.Response:
    """Send one of tests/test_serve.py's requests: a JSON body, or a dict of path, method, content, headers, json."""
    keys = {"content", "path", "method", "json"}
    spec = request if isinstance(request, dict) and keys & set(request) else {"json": request}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **spec.get("headers", {})}
    headers = {k: v for k, v in headers.items() if v is not None}
    body = spec["content"] if "content" in spec else json.dumps(spec.get("json", {})).encode()
    path = url + spec.get("path", "/v1/score")
    return httpx.request(spec.get("method", "POST"), path, content=body, headers=headers, timeout=60)


def markdown(report: dict[str, Any]) -> str:
    one, two, three = report["judge_killed"], report["service_killed"], report["malformed"]
    j = report["judge"]
    lines = [
        "# Faults around the reward service (`capbench serve`)",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}` ({report['seconds']:.0f} s in all).",
        "",
        f"Every part a process of its own on 127.0.0.1: the judge benchmarks/_latency_judge.py ({j['base_s'] * 1000:g} "
        f"ms + {j['per_prompt_token_s'] * 1000:g} ms per prompt word + {j['per_output_token_s'] * 1000:g} ms per "
        f"output word, {j['concurrency']} at once), the service `python -m capbench serve` (judge `openai:latency` "
        f"with {', '.join(f'{k}={v}' for k, v in report['engine_options'].items())}; answer mode letter), a fresh "
        "CAPBENCH_HOME per scenario.",
        "",
        f"## 1. The judge SIGKILLed mid-step ({JUDGED} items of `caprl_qa_utility`, {one['calls_per_step']} calls)",
        "",
        "| request | status | items | scored | null with a reason | silent (0 with an error, null without) "
        "| judge calls | cache hits | failed calls | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in one["rows"].items():
        usage = row.get("usage", {})
        lines.append(
            f"| {name} | {row['status']} | {row.get('items', '-')} | {row.get('scored', '-')} | "
            f"{row.get('failed_with_reason', '-')} | {row.get('silent', '-')} | {usage.get('judge_calls', '-')} | "
            f"{usage.get('cache_hits', '-')} | {usage.get('failures', '-')} | {row.get('seconds', '-')} |"
        )
    killed = one["rows"]["killed mid-step"]
    lines += [
        "",
        f"The judge was killed after receiving {killed['judge_received_before_kill']} of the step's calls. Reasons "
        f"given: {'; '.join(f'`{r[:160]}`' for r in killed['reasons'][:2])}. `/health` while the judge was down: "
        f"{one['rows']['while the judge is down']['health']}. The judge restarted on the same port was asked "
        f"{one['new_judge_asked']} calls: the {one['failed_calls_before']} that had failed "
        f"({'exactly those' if one['asked_only_failed_calls'] else 'NOT only those'}; answered calls came from "
        f"the cache). Statuses the service logged: {one['statuses']}; SIGTERM exit status {one['exit_code']}.",
        "",
        f"## 2. The service SIGKILLed mid-step ({two['rollouts']} rollouts of `captionqa` through capbench-rl's "
        f"ServiceReward, {two['calls']} judge calls)",
        "",
        "| | |",
        "|---|---|",
        f"| judge calls received when the service was killed | {two['judge_received_at_kill']} |",
        f"| cache entries the killed service left | {two['cache_entries_at_kill']} |",
        f"| received but not cached (in flight at the kill) | {two['received_not_cached']} |",
        f"| kill to the new service ready (same port, same cache) | {two['restart_seconds']} s |",
        f"| ServiceReward call, first try to last answer | {two['client_seconds']} s |",
        f"| rewards returned / null | {two['client_rewards']} / {two['client_none']} |",
        f"| judge: received, distinct, received twice | {two['judge_received']}, {two['judge_distinct']}, "
        f"{two['judge_repeated']} |",
        f"| nothing the cache had was judged twice (received twice = received but not cached; distinct = calls = "
        f"{two['calls_expected']} questions) "
        f"| {'yes' if two['nothing_cached_judged_twice'] else 'NO'} |",
        f"| the same items sent again: judge calls, cache hits, same rewards | {two['resend']['judge_calls']}, "
        f"{two['resend']['cache_hits']}, {'yes' if two['resend']['same_rewards'] else 'NO'} |",
        "",
        f"## 3. Malformed requests ({three['kinds']} kinds; {three['as_listed']} answered as listed, "
        f"{three['server_errors']} server errors)",
        "",
        "The kinds are tests/test_serve.py's `MALFORMED` and `UNREADABLE` (the three JSON kinds at the end "
        "answered 500 before this benchmark found them), sent to a service with a token, benchmark mini, an image "
        "folder, `--max-items 4`, `--max-body-mb 0.05`.",
        "",
        "| kind | status (listed) | message |",
        "|---|---|---|",
    ]
    for row in three["rows"]:
        mark = "" if row["as_listed"] else " **not as listed**"
        detail = row["detail"].replace("|", "\\|").replace("\n", " ")
        detail = detail if len(detail) <= 150 else detail[:147] + "..."
        lines.append(f"| {row['kind']} | {row['status']} ({row['expected']}){mark} | {detail} |")
    good = three["good_request_after"]
    lines += [
        "",
        f"A good request afterwards: HTTP {good['status']}, {good.get('scored')}/{good.get('items')} items scored. "
        f"SIGTERM exit status {three['exit_code']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        parts = {}
        for name, run in (("judge_killed", judge_killed), ("service_killed", service_killed),
                          ("malformed", malformed)):  # fmt: skip
            (folder / name).mkdir()
            parts[name] = run(folder / name)
    for row in parts["judge_killed"]["rows"].values():
        row.pop("rewards", None)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}",
        "command": " ".join(["python benchmarks/serve_faults.py", *sys.argv[1:]]),
        "seconds": round(time.perf_counter() - started, 1),
        "judge": JUDGE,
        "engine_options": ENGINE_OPTIONS,
        **parts,
    }
    save("serve_faults", report, markdown(report))


if __name__ == "__main__":
    main()
