"""Registries of metrics, benchmarks and engines: capbench's own, and those installed packages add.

A package extends capbench by declaring entry points in its ``pyproject.toml``::

    [project.entry-points."capbench.metrics"]
    wordcount = "my_package.metrics:WordCount"        # a metric class

    [project.entry-points."capbench.benchmarks"]
    my-bench = "my_package.data:load"                  # load(with_images=False, **options) -> Benchmark

    [project.entry-points."capbench.engines"]
    my-backend = "my_package.engine:MyEngine"          # MyEngine(model, **options), the Engine protocol

Entry points are listed without importing anything; a plugin is imported when its name is
first used (or when ``capbench list`` describes it). A plugin that fails to import is reported
with its package and the error, only where it is used, and breaks nothing else; a plugin
name that clashes with a built-in one is left out with a notice.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from capbench.errors import ConfigError

#: Kind of extension -> its entry-point group.
GROUPS = {"metric": "capbench.metrics", "benchmark": "capbench.benchmarks", "engine": "capbench.engines"}
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class PluginError(ConfigError):
    """A plugin could not be imported, or what it registers is not what capbench expects."""


@dataclass(frozen=True)
class Entry:
    """One registered name: where its object lives and who provides it."""

    name: str
    kind: str
    #: ``module:attribute`` (or ``module`` for a built-in benchmark, whose module has ``load``).
    target: str
    description: str = ""
    #: The distribution that declares it, e.g. ``capbench-wordcount 0.1``; None for built-ins.
    package: str | None = None

    @property
    def origin(self) -> str:
        """Where the name comes from, as listings show it."""
        return self.package or "capbench"


class Registry:
    """The names of one kind: a live table of built-ins plus the entry points of installed packages."""

    def __init__(self, kind: str, builtins: Callable[[], Mapping[str, Entry]]) -> None:
        self.kind = kind
        self.group = GROUPS[kind]
        self._builtins = builtins
        self._plugins: dict[str, Entry] | None = None
        self._problems: list[str] = []
        self._loaded: dict[str, Any] = {}

    def refresh(self) -> None:
        """Forget what was found, so newly installed plugins are seen (tests, long-lived sessions)."""
        self._plugins = None
        self._problems = []
        self._loaded.clear()
        importlib.invalidate_caches()

    def entries(self) -> dict[str, Entry]:
        """Return every name of this kind: built-ins first, then plugins."""
        builtins = dict(self._builtins())
        return {**builtins, **{k: v for k, v in self._scan(builtins).items() if k not in builtins}}

    def names(self) -> list[str]:
        """Return the registered names, built-ins first, in registry order."""
        return list(self.entries())

    def problems(self) -> list[str]:
        """Return the notices about plugins left out (bad names, clashes with built-ins)."""
        self._scan(dict(self._builtins()))
        return list(self._problems)

    def entry(self, name: str) -> Entry:
        """Return the entry of ``name``.

        Raises:
            ConfigError: no such name; the message lists the names there are and where plugins come from.
        """
        entries = self.entries()
        if name not in entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; {self.available(entries)}")
        return entries[name]

    def available(self, entries: Mapping[str, Entry] | None = None) -> str:
        """A clause naming the available names and how a package adds one."""
        entries = self.entries() if entries is None else entries
        return (
            f"choose from: {', '.join(sorted(entries))} (packages add {self.kind}s through the "
            f"{self.group!r} entry-point group; `capbench list` shows them)"
        )

    def load(self, name: str) -> Any:
        """Import and return the object registered as ``name`` (cached).

        Raises:
            ConfigError: unknown name.
            PluginError: the plugin failed to import; the message names its package and the error.
        """
        entry = self.entry(name)
        if entry.target in self._loaded:
            return self._loaded[entry.target]
        module_name, _, attribute = entry.target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in filter(None, attribute.split(".")):
                obj = getattr(obj, part)
        except Exception as exc:  # a plugin may fail in any way: report it by name, break nothing else
            if entry.package is None:
                raise
            raise PluginError(
                f"{self.kind} {name!r} from package {entry.package} failed to import "
                f"({type(exc).__name__}: {exc}); fix or uninstall that package"
            ) from exc
        self._loaded[entry.target] = obj
        return obj

    def _scan(self, builtins: Mapping[str, Entry]) -> dict[str, Entry]:
        if self._plugins is not None:
            return self._plugins
        from importlib.metadata import entry_points

        found: dict[str, Entry] = {}
        problems: list[str] = []
        for point in entry_points(group=self.group):
            dist = getattr(point, "dist", None)
            package = f"{dist.name} {dist.version}" if dist is not None else "an unknown package"
            if not _NAME.match(point.name):
                problems.append(
                    f"{self.kind} {point.name!r} from {package}: not a valid name (lowercase letters, digits, - "
                    "and _, starting with a letter); left out"
                )
            elif self.kind == "metric" and point.name in _reserved():
                problems.append(f"metric {point.name!r} from {package}: that name is reserved; left out")
            elif point.name in builtins:
                problems.append(
                    f"{self.kind} {point.name!r} from {package} clashes with capbench's own; left out (rename it)"
                )
            elif point.name in found:
                problems.append(
                    f"{self.kind} {point.name!r} is declared by {found[point.name].package} and {package}; "
                    f"the first is used"
                )
            else:
                found[point.name] = Entry(point.name, self.kind, point.value, "", package)
        self._plugins, self._problems = found, problems
        return found


def _reserved() -> frozenset[str]:
    from capbench.records import RESERVED_METRIC_NAMES

    return RESERVED_METRIC_NAMES


def _metric_builtins() -> dict[str, Entry]:
    from capbench.metrics import METRICS

    return {
        name: Entry(name, "metric", f"{module}:{cls}", description)
        for name, (module, cls, _, description) in METRICS.items()
    }


def _benchmark_builtins() -> dict[str, Entry]:
    from capbench.data import BENCHMARKS

    return {
        name: Entry(name, "benchmark", f"{module}:load", description)
        for name, (module, description) in BENCHMARKS.items()
    }


def _engine_builtins() -> dict[str, Entry]:
    from capbench.engines import ENGINES

    return {
        name: Entry(name, "engine", f"{module}:{cls}", description)
        for name, (module, cls, description) in ENGINES.items()
    }


metrics = Registry("metric", _metric_builtins)
benchmarks = Registry("benchmark", _benchmark_builtins)
engines = Registry("engine", _engine_builtins)


def refresh() -> None:
    """Rescan installed plugins in every registry."""
    for registry in (metrics, benchmarks, engines):
        registry.refresh()


def first_line(obj: Any) -> str:
    """The first line of an object's docstring (a plugin's description in listings)."""
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
