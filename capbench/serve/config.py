"""Settings of the reward service: the judges and metrics behind it, and how it takes requests.

:class:`ServeConfig` is frozen and checks its own fields; :func:`capbench.serve.service.prepare`
checks what needs the registries and the disk (judges, metric settings, the benchmark, image
folders, the token), all before any judge loads or the port opens.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import capbench
from capbench import ConfigError

PathLike = str | os.PathLike
#: The most batches a service judges at once (each holds a worker thread).
MAX_BATCHES = 64


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``capbench serve`` takes.

    Example::

        ServeConfig(
            judge="openai:Qwen/Qwen2.5-72B-Instruct",
            judge_options={"base_url": "http://localhost:8000/v1"},
            benchmark="mini",
            images_root=["/data/rollout-images"],
        )
    """

    judge: str | None = None
    """Text judge as ``ENGINE:MODEL`` or a YAML spec file (None: capbench eval's default, the embedded judge)."""
    judge_options: Mapping[str, Any] | Sequence[str] = field(default_factory=dict)
    """The judge engine's options (``base_url`` included), or ``KEY=VALUE`` strings."""
    vision_judge: str | None = None
    """Judge that sees the image (fact verification); None verifies against the reference caption."""
    vision_judge_options: Mapping[str, Any] | Sequence[str] = field(default_factory=dict)
    fact_protocol: str = "auto"
    """DCScore/BalCap judge settings: 'official', 'greedy', 'embedded', or 'auto'."""
    answer_mode: str = "auto"
    """QA metrics: 'letter', 'loglik', or 'auto' (loglik for the embedded judge)."""
    caprl_samples: int = 8
    """CapRL: questions drawn per caption."""
    seed: int = 0
    metric_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per metric, settings of its config (as ``EvalConfig.metrics`` given as a mapping)."""
    cache: bool | PathLike = True
    """The judge-call cache: True = $CAPBENCH_HOME/cache.sqlite (shared with capbench eval), False = memory, a path."""
    benchmark: str | None = None
    """A benchmark whose samples items may name by ``sample_id`` (their image and references)."""
    benchmark_options: Mapping[str, Any] = field(default_factory=dict)
    """Options of the benchmark's loader (``images_dir``, ``data_file``, ...)."""
    images_root: Sequence[PathLike] = ()
    """Folders whose images items may name by path; a path anywhere else is refused."""
    host: str = "127.0.0.1"
    port: int = 8765
    """0 picks a free port."""
    batch_window_ms: float = 10.0
    """Requests arriving within this window are judged in shared engine batches."""
    max_batches: int = 4
    """Batches judged at once at most: a batch starts when its window closes, while fewer are being judged.

    1 with a judge that takes one batch at a time (an in-process model)."""
    max_queue: int = 4096
    """Items accepted and not yet answered (waiting or being judged) at most; beyond it requests get 429."""
    max_items: int = 1024
    """Items per request at most."""
    max_body_mb: float = 64.0
    """Request body size at most, in MB (also the most an image URL may download)."""
    timeout: float = 600.0
    """Seconds a request may take; after it, 504 (the judgments made are still cached)."""
    token_env: str = "CAPBENCH_SERVE_TOKEN"
    """Environment variable holding the bearer token; when it is set, requests must carry it."""

    def __post_init__(self) -> None:
        for name in ("caprl_samples", "port", "max_batches", "max_queue", "max_items", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"ServeConfig.{name} must be an int, not {type(value).__name__} ({value!r:.40})")
        for name in ("batch_window_ms", "max_body_mb", "timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"ServeConfig.{name} must be a finite number, not {value!r:.40}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not a TCP port; choose one in 1-65535 (0: any free port)")
        if self.batch_window_ms < 0:
            raise ConfigError(f"batch window {self.batch_window_ms} ms is negative; give 0 or more (--batch-window-ms)")
        for name, flag in (("max_queue", "--max-queue"), ("max_items", "--max-items"), ("caprl_samples", "")):
            if getattr(self, name) < 1:
                raise ConfigError(f"ServeConfig.{name} must be at least 1, not {getattr(self, name)} {flag}".strip())
        if not 1 <= self.max_batches <= MAX_BATCHES:
            raise ConfigError(
                f"--max-batches {self.max_batches} is out of range; give 1 (one batch at a time) to {MAX_BATCHES} "
                "(each batch being judged holds a thread)"
            )
        if self.max_items > self.max_queue:
            raise ConfigError(
                f"--max-items {self.max_items} is more than --max-queue {self.max_queue}: such a request could "
                "never be queued; raise --max-queue or lower --max-items"
            )
        if self.max_body_mb <= 0 or self.timeout <= 0:
            raise ConfigError("--max-body-mb and --timeout must be more than 0")
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError("--host is empty; give an address to listen on (127.0.0.1: this machine only)")
        if not isinstance(self.token_env, str) or not self.token_env.strip() or "=" in self.token_env:
            raise ConfigError(f"--token-env {self.token_env!r} is not an environment variable name")
        if isinstance(self.images_root, (str, bytes, os.PathLike)):
            raise ConfigError("ServeConfig.images_root takes a list of folders, not one path")
        if not isinstance(self.metric_settings, Mapping) or not all(
            isinstance(v, Mapping) for v in self.metric_settings.values()
        ):
            raise ConfigError("ServeConfig.metric_settings must map metric names to mappings of their settings")

    @property
    def max_body_bytes(self) -> int:
        """The body limit in bytes."""
        return int(self.max_body_mb * 1_000_000)

    def eval_config(self, metrics: Sequence[str] = ()) -> capbench.EvalConfig:
        """The library settings of the judges and of ``metrics`` (as ``capbench eval`` would take them).

        Raises:
            ConfigError: a judge setting's type or value is wrong (named as ``EvalConfig`` names it).
        """
        settings: dict[str, Any] = {
            "judge_options": self.judge_options,
            "vision_judge": self.vision_judge,
            "vision_judge_options": self.vision_judge_options,
            "fact_protocol": self.fact_protocol,
            "answer_mode": self.answer_mode,
            "caprl_samples": self.caprl_samples,
            "seed": self.seed,
            "cache": self.cache,
            "metrics": {name: dict(self.metric_settings.get(name, {})) for name in metrics},
        }
        if self.judge is not None:
            settings["judge"] = self.judge
        return capbench.EvalConfig(**settings)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values (no token: only the variable's name)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, (list, tuple)):
                value = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
            out[item.name] = value
        return out


def config_from_options(opts: Mapping[str, Any]) -> ServeConfig:
    """Turn ``capbench serve``'s parsed options into a :class:`ServeConfig`."""

    def engine_options(role: str) -> list[str]:
        options = list(opts.get(f"{role}_opt") or ())
        if opts.get(f"{role}_base_url"):
            options.append(f"base_url={opts[f'{role}_base_url']}")
        return options

    loader = {k: opts[k] for k in ("images_dir", "data_file", "dataset", "split") if opts.get(k) is not None}
    if loader and not opts.get("benchmark"):
        flags = ", ".join("--" + k.replace("_", "-") for k in loader)
        raise ConfigError(f"{flags} set(s) the files of a benchmark: give --benchmark NAME with it")
    return ServeConfig(
        judge=opts.get("judge"),
        judge_options=engine_options("judge"),
        vision_judge=opts.get("vision_judge"),
        vision_judge_options=engine_options("vision_judge"),
        fact_protocol=opts.get("fact_protocol") or "auto",
        answer_mode=opts.get("answer_mode") or "auto",
        caprl_samples=opts.get("caprl_samples") or 8,
        seed=opts.get("seed") or 0,
        cache=not opts.get("no_cache"),
        benchmark=opts.get("benchmark"),
        benchmark_options=loader,
        images_root=tuple(opts.get("images_root") or ()),
        host=opts.get("host") or "127.0.0.1",
        port=opts["port"] if opts.get("port") is not None else 8765,
        batch_window_ms=opts["batch_window_ms"] if opts.get("batch_window_ms") is not None else 10.0,
        max_batches=opts.get("max_batches") or ServeConfig.max_batches,
        max_queue=opts.get("max_queue") or 4096,
        max_items=opts.get("max_items") or 1024,
        max_body_mb=opts.get("max_body_mb") or 64.0,
        timeout=opts.get("timeout") or 600.0,
        token_env=opts.get("token_env") or "CAPBENCH_SERVE_TOKEN",
    )
