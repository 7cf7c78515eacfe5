"""Typed, validated settings of an evaluation: what :func:`capbench.evaluate` and ``capbench eval`` take.

:class:`EvalConfig` is frozen. Its constructor checks every field's type and value and raises a
:class:`~capbench.errors.ConfigError` naming the field; :func:`capbench.api.prepare` then checks
what needs the registries and the disk (names of metrics, benchmarks and engines, files, metric
settings), still before any model loads.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, Union

from capbench.engines import DEFAULT_JUDGE
from capbench.errors import ConfigError

PathLike = str | os.PathLike
Choices = {
    "answer_mode": ("auto", "letter", "loglik"),
    "fact_protocol": ("auto", "official", "greedy", "embedded"),
    "arena_order": ("both", "single"),
}
_Item = TypeVar("_Item")


@dataclass(frozen=True)
class Shard:
    """One part of an evaluation split over ``count`` processes; ``index`` counts from 0, as SLURM array ids do.

    Shard ``i`` of ``n`` takes the selected samples at positions ``i, i + n, i + 2n, …`` (benchmark
    order, after ``limit``): every shard agrees on the split without talking to the others, and
    the shards' sizes differ by at most one.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: I must run from 0 to N-1 in shard I/N")

    @classmethod
    def parse(cls, text: str, what: str = "--shard") -> Shard:
        """Read ``'I/N'`` (``'0/4'`` is the first of 4 shards).

        Raises:
            ConfigError: not ``I/N``, ``N`` below 1, or ``I`` outside ``0 … N-1``; the message names ``what``.
        """
        found = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
        if found is None:
            raise ConfigError(
                f"{what} is {text!r}; write I/N with I counted from 0, e.g. 0/4 for the first of 4 shards "
                "(SLURM: --shard $SLURM_ARRAY_TASK_ID/4 with --array=0-3)"
            )
        index, count = int(found.group(1)), int(found.group(2))
        if count < 1:
            raise ConfigError(f"{what} is {text!r}: N, the number of shards, must be at least 1")
        if index >= count:
            raise ConfigError(
                f"{what} is {text!r}: shards are counted from 0, so I runs from 0 to {count - 1} "
                f"(SLURM: --array=0-{count - 1} with --shard $SLURM_ARRAY_TASK_ID/{count})"
            )
        return cls(index, count)

    def part(self, items: Sequence[_Item]) -> list[_Item]:
        """Return this shard's items: positions ``index``, ``index + count``, …"""
        return list(items[self.index :: self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class EvalConfig:
    """Everything one evaluation needs: the benchmark, the captions (or a model to write them), metrics, judges.

    Example::

        EvalConfig(
            benchmark="mini",
            captions={"mine": "my_captions.jsonl"},
            metrics=["captionqa", "balcap"],
            judge="openai:Qwen/Qwen2.5-72B-Instruct",
            judge_options={"base_url": "http://localhost:8000/v1"},
        )
    """

    benchmark: str = "mini"
    """Benchmark name (``capbench.catalogue()`` or ``capbench list`` shows them)."""
    benchmark_options: Mapping[str, Any] = field(default_factory=dict)
    """Options of the benchmark's loader, e.g. ``images_dir``, ``data_file``, ``dataset``, ``split``."""
    captions: Mapping[str, Any] | Sequence[PathLike] = ()
    """Caption sets: a list of files (each named after its file), or ``{name: file}`` where a value may
    also be an ``{id: caption}`` mapping. Files are JSONL ``{id, caption}`` lines or a JSON mapping."""
    example_captions: bool = False
    """Also score the example caption sets the benchmark ships."""
    model: str | None = None
    """Generate captions with this model first: ``ENGINE:MODEL``, or a model for ``engine``."""
    engine: str = "vllm"
    """Engine of ``model`` when it names none."""
    model_options: Mapping[str, Any] | Sequence[str] = field(default_factory=dict)
    """Options of the model's engine (``base_url`` for a served model), or ``KEY=VALUE`` strings."""
    name: str | None = None
    """Name of the generated caption set (default: the model's name)."""
    caption_prompt: str = "default"
    """'default', 'paraphrases', or the prompt text itself."""
    caption_max_tokens: int = 1024
    caption_temperature: float = 0.0
    regenerate: bool = False
    """Discard captions the model generated before, and generate them again."""
    metrics: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("captionqa",)
    """Metric names, or ``{name: {setting: value}}`` with settings of each metric's config (checked)."""
    judge: str = DEFAULT_JUDGE
    """Text judge as ``ENGINE:MODEL`` or a YAML spec file."""
    judge_options: Mapping[str, Any] | Sequence[str] = field(default_factory=dict)
    """The judge engine's options (``base_url`` included), or ``KEY=VALUE`` strings."""
    vision_judge: str | None = None
    """Judge that sees the image (fact verification, arena); None = check against the reference caption."""
    vision_judge_options: Mapping[str, Any] | Sequence[str] = field(default_factory=dict)
    answer_mode: str = "auto"
    """QA metrics: 'letter' (the protocol), 'loglik', or 'auto' (loglik for the embedded judge)."""
    fact_protocol: str = "auto"
    """DCScore/BalCap judge settings: 'official', 'greedy', 'embedded', or 'auto'."""
    arena_order: str = "both"
    caprl_samples: int = 8
    prompt_dir: PathLike | None = None
    """Folder of prompt templates replacing capbench's own (same file names)."""
    seed: int = 0
    limit: int | None = None
    """Score only the first N samples."""
    shard: str | None = None
    """Evaluate only shard 'I/N' of the selected samples (I counted from 0: '0/4' … '3/4'), in a shard folder of
    its own; `capbench merge` (:func:`capbench.merge_shards`) combines the N shards into one run."""
    batch_size: int = 8
    """Samples per judging batch (results are saved after each)."""
    results_dir: PathLike = "results"
    overwrite: bool = False
    """Discard earlier scores of these runs instead of resuming them."""
    cache: bool | PathLike = True
    """The judge-call cache: True = $CAPBENCH_HOME/cache.sqlite, False = this run only, or a path."""
    record_judge: PathLike | None = None
    """Record every judge reply to this cassette file."""

    def __post_init__(self) -> None:
        hints = _hints()
        if isinstance(self.captions, (str, bytes, os.PathLike)):
            raise ConfigError("EvalConfig.captions takes a list of files or a {name: file} mapping, not one path")
        if isinstance(self.metrics, str):
            raise ConfigError(
                f"EvalConfig.metrics takes a list of names (or a {{name: settings}} mapping), not the string "
                f"{self.metrics!r}; write [{', '.join(repr(m.strip()) for m in self.metrics.split(','))}]"
            )
        for item in fields(self):
            value = getattr(self, item.name)
            if not _is_instance(value, hints[item.name]):
                raise ConfigError(
                    f"EvalConfig.{item.name} must be {_describe(hints[item.name])}, not {type(value).__name__} "
                    f"({value!r:.60})"
                )
        for name, allowed in Choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"EvalConfig.{name} is {getattr(self, name)!r}; choose from {', '.join(allowed)}")
        for name in ("batch_size", "caption_max_tokens", "caprl_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EvalConfig.{name} must be at least 1, not {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"EvalConfig.limit must be at least 1 (or None for every sample), not {self.limit}")
        if self.shard is not None:
            Shard.parse(self.shard, "EvalConfig.shard")
        if self.caption_temperature < 0:
            raise ConfigError(f"EvalConfig.caption_temperature must be 0 or more, not {self.caption_temperature}")
        for name in self.metric_names:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"EvalConfig.metrics holds {name!r}, not a metric name")
        if len(set(self.metric_names)) != len(self.metric_names):
            raise ConfigError(f"EvalConfig.metrics names a metric twice: {list(self.metric_names)}")
        if isinstance(self.metrics, Mapping):
            for metric, settings in self.metrics.items():
                if not isinstance(settings, Mapping):
                    raise ConfigError(
                        f"EvalConfig.metrics[{metric!r}] must be a mapping of that metric's settings, "
                        f"not {type(settings).__name__}"
                    )

    @property
    def shard_spec(self) -> Shard | None:
        """``shard`` parsed (None when the evaluation is not sharded)."""
        return None if self.shard is None else Shard.parse(self.shard, "EvalConfig.shard")

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics, in order."""
        return tuple(self.metrics)

    def metric_settings(self, name: str) -> dict[str, Any]:
        """The settings given for metric ``name`` (empty when ``metrics`` is a list)."""
        return dict(self.metrics.get(name, {})) if isinstance(self.metrics, Mapping) else {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalConfig:
        """Build from a mapping (a parsed JSON or YAML file, keyword arguments).

        Raises:
            ConfigError: an unknown key (the message lists the fields), or a wrong type or value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown evaluation setting(s) {', '.join(map(repr, unknown))}; the settings are: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> EvalConfig:
        """Return a copy with ``changes`` (checked like the constructor's arguments)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(k for k in changes if k not in known)
        if unknown:
            raise ConfigError(f"unknown evaluation setting(s) {', '.join(map(repr, unknown))}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values (paths as strings, mappings as dicts)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    """EvalConfig's field types, resolved once."""
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(EvalConfig, globalns={**globals(), "PathLike": PathLike}))
    return _HINTS


def defaults() -> dict[str, Any]:
    """Every field's default value."""
    out = {}
    for item in fields(EvalConfig):
        out[item.name] = item.default_factory() if item.default is MISSING else item.default  # type: ignore[misc]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_instance(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a type hint of the kinds EvalConfig uses."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is not None and isinstance(origin, type):
        if origin is Mapping or issubclass(origin, Mapping):
            return isinstance(value, Mapping)
        if origin is Sequence or issubclass(origin, Sequence):
            if not isinstance(value, (list, tuple)):
                return False
            (arg,) = typing.get_args(hint) or (Any,)
            return all(_is_instance(v, arg) for v in value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if origin is not None:
        return {Mapping: "a mapping", Sequence: "a list"}.get(origin, getattr(origin, "__name__", str(origin)))
    if hint is os.PathLike:
        return "a path"
    return getattr(hint, "__name__", str(hint))


def as_path(value: PathLike | None) -> Path | None:
    """``value`` as a Path (None stays None)."""
    return None if value is None else Path(value)
