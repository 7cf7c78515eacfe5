"""Benchmark loaders, registered by name and imported only when used."""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of: {', '.join(sorted(BENCHMARKS))}")
    module = importlib.import_module(BENCHMARKS[name][0])
    accepted = inspect.signature(module.load).parameters
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(k for k in given if k not in accepted)
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ConfigError(f"benchmark {name!r} takes no {flags}")
    return module.load(with_images=with_images, **given)


def image_ref(path: Path, fix: str) -> ImageRef:
    """Return a reference to the image at ``path``, refusing one that no judge could read.

    Raises:
        InputError: the image is missing, empty, not an image, truncated or too large; the
            message names the file and ends with ``fix``.
    """
    from capbench.engines.images import image_problem

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
