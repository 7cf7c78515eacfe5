"""Benchmark loaders, registered by name and imported only when used."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capbench.errors import ConfigError, InputError
from capbench.hashing import sha256_bytes
from capbench.records import ImageRef, Sample

#: Benchmark name -> (module with a ``load(with_images, **options)`` function, description).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "mini": ("capbench.data.mini", "capbench-mini: 18 real photographs bundled with capbench (offline)"),
    "decapbench": ("capbench.data.decapbench", "DeCapBench: 400 IIW images with human reference facts (DCScore)"),
    "caparena": ("capbench.data.caparena", "CapArena-Auto: 600 DOCCI images against fixed baselines (--data-file)"),
    "captionqa": (
        "capbench.data.captionqa",
        "CaptionQA: 657 entries in 4 domains with multiple-choice questions (Hugging Face Borise/CaptionQA)",
    ),
    "jsonl": (
        "capbench.data.jsonl",
        "your own JSONL of images with reference captions, facts and questions (--data-file)",
    ),
}


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: its samples in order, and any example caption sets it ships."""

    name: str
    samples: tuple[Sample, ...]
    description: str = ""
    example_captions: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for sample in self.samples:
            if sample.id in seen:
                raise InputError(f"benchmark {self.name!r}: sample id {sample.id!r} appears twice")
            seen.add(sample.id)

    @property
    def domains(self) -> list[str]:
        """The benchmark's domains, in first-seen order."""
        return list(dict.fromkeys(s.domain for s in self.samples))

    def by_id(self) -> dict[str, Sample]:
        """Return the samples keyed by id."""
        return {s.id: s for s in self.samples}


def load_benchmark(name: str, with_images: bool = False, **options: object) -> Benchmark:
    """Load benchmark ``name``; images are resolved only when ``with_images`` is set.

    ``options`` go to the benchmark's loader where it takes them (e.g. ``images_dir``); options
    set to None are dropped.
    """
    load = benchmark_loader(name)
    accepted = inspect.signature(load).parameters
    given = {k: v for k, v in options.items() if v is not None}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [] if takes_any else sorted(k for k in given if k not in accepted)
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ConfigError(f"benchmark {name!r} takes no {flags}")
    bench = load(with_images=with_images, **given)
    if not isinstance(bench, Benchmark):
        from capbench.registry import PluginError

        raise PluginError(f"benchmark {name!r}: its loader returned {type(bench).__name__}, not a capbench Benchmark")
    return bench


def benchmark_names() -> list[str]:
    """Return every benchmark this install offers: capbench's own, then plugins'."""
    from capbench import registry

    return registry.benchmarks.names()


def benchmark_loader(name: str) -> Any:
    """Return the ``load(with_images=False, **options)`` function of benchmark ``name``.

    Raises:
        ConfigError: no such benchmark (the message lists those there are).
        PluginError: the plugin that provides it failed to import.
    """
    from capbench import registry

    load = registry.benchmarks.load(name)
    if not callable(load):
        raise registry.PluginError(f"benchmark {name!r} from {registry.benchmarks.entry(name).origin} is not callable")
    return load


def benchmark_options(name: str) -> list[str]:
    """Return the loader options benchmark ``name`` takes (besides ``with_images``)."""
    params = inspect.signature(benchmark_loader(name)).parameters
    return [k for k, p in params.items() if k != "with_images" and p.kind is not inspect.Parameter.VAR_KEYWORD]


def image_ref(path: Path, fix: str) -> ImageRef:
    """Return a reference to the image at ``path``, refusing one that no judge could read.

    Raises:
        InputError: the image is missing, empty, not an image, truncated or too large; the
            message names the file and ends with ``fix``.
    """
    from capbench.images import image_problem

    if not path.is_file():
        raise InputError(f"{path}: image missing; {fix}")
    data = path.read_bytes()
    problem = image_problem(data)
    if problem is not None:
        raise InputError(f"{path}: {problem}; {fix}")
    return ImageRef(str(path), sha256_bytes(data))


def images_folder(images_dir: str | os.PathLike[str]) -> Path:
    """Return ``images_dir`` as a path, checking that it is a folder.

    Raises:
        InputError: ``images_dir`` does not exist or is not a folder.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise InputError(f"--images-dir {folder}: no such folder; pass the folder that holds the benchmark's images")
    return folder
