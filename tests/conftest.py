"""Shared fixtures: every test gets its own capbench home, so no state leaks between tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from capbench.engines.base import OnResult, Request, Response


@pytest.fixture(autouse=True)
def capbench_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point CAPBENCH_HOME at a fresh folder for each test."""
    home = tmp_path / "capbench-home"
    monkeypatch.setenv("CAPBENCH_HOME", str(home))
    # Tests never reach a hub: a loader that tried would fail here instead of downloading.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return home


def run_cli(*args: object, ok: bool = True, catch_exceptions: bool = False):
    """Run ``capbench ARGS`` in-process (a wide terminal, so tables do not wrap); with ``ok``, assert exit 0."""
    from click.testing import CliRunner

    from capbench.cli import main

    result = CliRunner(env={"COLUMNS": "250"}).invoke(main, [str(a) for a in args], catch_exceptions=catch_exceptions)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def one_line_error(result, *words: str) -> str:
    """Assert a CLI result is exit 1 with one ``Error: …`` line (no traceback) holding ``words``; return it."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def prefers_longer(request) -> str:
    """A pairwise judge reply: the longer of the two fenced captions is better; equal lengths tie."""
    import re

    text = request.messages[-1].joined_text()
    one = re.search(r"<caption_1>\n(.*?)\n</caption_1>", text, re.S).group(1)
    two = re.search(r"<caption_2>\n(.*?)\n</caption_2>", text, re.S).group(1)
    verdict = (
        "Tie" if len(one) == len(two) else ("Caption 1 is better" if len(one) > len(two) else "Caption 2 is better")
    )
    return json.dumps({"reason": "length", "judgment": verdict})


class ScriptedEngine:
    """A deterministic in-process engine for unit tests: replies come from a function."""

    backend = "scripted"
    accepts_images = False
    supports_loglik = True

    def __init__(self, reply=lambda request: "A", name: str = "scripted") -> None:
        self.reply = reply
        self.name = name
        self.calls: list[Request] = []

    def fingerprint(self) -> dict:
        return {"backend": self.backend, "model": self.name}

    def run(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Response]:
        out = []
        for index, request in enumerate(requests):
            self.calls.append(request)
            answer = self.reply(request)
            response = (
                answer
                if isinstance(answer, Response)
                else Response(texts=(answer,), prompt_tokens=10, completion_tokens=1)
            )
            out.append(response)
            if on_result is not None:
                on_result(index, response)
        return out


@pytest.fixture
def write_json(tmp_path: Path):
    """Write an object as JSON (or a list of objects as JSONL) into tmp_path and return the path."""

    def write(name: str, value, jsonl: bool = False) -> Path:
        path = tmp_path / name
        if jsonl:
            path.write_text("".join(json.dumps(v) + "\n" for v in value), encoding="utf-8")
        else:
            path.write_text(json.dumps(value), encoding="utf-8")
        return path

    return write


class FixedReplyEngine(ScriptedEngine):
    """``scripted:REPLY`` from the command line: every request gets the reply REPLY."""

    def __init__(self, model: str) -> None:
        super().__init__(lambda request: model, name=model)


@pytest.fixture
def scripted_cli_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``--judge scripted:REPLY`` available to the CLI in this test."""
    from capbench import engines

    monkeypatch.setitem(engines.ENGINES, "scripted", ("conftest", "FixedReplyEngine", "test engine"))


@pytest.fixture
def oracle_cli_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``--judge oracle:truth`` (the true judgments of capbench-mini) available to the CLI."""
    from capbench import engines

    monkeypatch.setitem(engines.ENGINES, "oracle", ("oracle_engine", "OracleEngine", "test engine"))


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a transformers folder, converted once from the bundled GGUF and kept."""
    from capbench.engines.models import bundled_checkpoint

    return bundled_checkpoint("smollm2")


def kill_after_lines(command: list[str], log: Path, lines: int, timeout: float = 600.0) -> int:
    """Start ``command``, SIGKILL it once ``log`` has ``lines`` finished lines; return the lines then held.

    The embedded judge is slow on a busy machine, hence the generous ``timeout``; running out of it
    fails the test with the count reached, not with a missing file.
    """
    import os
    import signal
    import subprocess
    import time

    def held() -> int:
        return log.read_text().count("\n") if log.exists() else 0

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and held() < lines:
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if held() < lines:
        pytest.fail(f"{log} held {held()} of {lines} lines after {timeout:.0f} s: the run is stuck or the machine busy")
    return held()


# ---------------------------------------------------------------- the hf engine's tests


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one thread: on a small shared CPU, two threads made each tiny matmul ~100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random Qwen2.5-VL ("vlm") and Llama ("text"), built from configs in a module's temp folder."""
    from tiny_models import build_tiny_llama, build_tiny_qwen25vl

    root = tmp_path_factory.mktemp("tiny-models")
    return {"vlm": build_tiny_qwen25vl(root / "tiny-qwen25vl"), "text": build_tiny_llama(root / "tiny-llama")}
