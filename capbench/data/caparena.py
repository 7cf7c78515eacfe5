"""CapArena-Auto: 600 DOCCI images, each with a human caption and one fixed baseline model's caption.

The data file (``caparena_auto_600.json``) and the images are downloads of the CapArena
release, not bundled: pass them with ``--data-file`` and ``--images-dir``. The file is a JSON
object keyed by image file name; each entry has ``captions`` (model name → caption, with the
human reference under ``"human"``) and ``ref_model``, the baseline this image is judged against.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capbench.data import Benchmark, image_ref, images_folder
from capbench.errors import ConfigError, InputError
from capbench.records import Sample, read_json_file

NAME = "caparena"
DESCRIPTION = "CapArena-Auto: 600 DOCCI images judged pairwise against fixed baselines (needs --data-file)"
HUMAN = "human"


def load(
    with_images: bool = False,
    images_dir: str | os.PathLike[str] | None = None,
    data_file: str | os.PathLike[str] | None = None,
) -> Benchmark:
    """Load CapArena-Auto from its data file; with ``with_images``, find each image in ``images_dir``."""
    if data_file is None:
        raise ConfigError(
            "CapArena-Auto's data is not bundled: pass --data-file caparena_auto_600.json "
            "(from the CapArena release) and, for a vision judge, --images-dir with its images"
        )
    if with_images and images_dir is None:
        raise ConfigError("a vision judge needs CapArena-Auto's images: pass --images-dir")
    path = Path(data_file)
    entries = _read(path)
    folder = images_folder(images_dir) if with_images and images_dir is not None else None
    samples = [_sample(path, name, entry, folder) for name, entry in entries.items()]
    return Benchmark(NAME, tuple(samples), DESCRIPTION)


def _read(path: Path) -> Mapping[str, Any]:
    data = read_json_file(path, "CapArena-Auto's data file (caparena_auto_600.json) to --data-file")
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected a JSON object keyed by image file name, as caparena_auto_600.json is")
    return data


def _sample(path: Path, name: str, entry: Any, images: Path | None) -> Sample:
    where = f"{path}: entry {name!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("captions"), dict):
        raise InputError(f"{where} has no 'captions' object; is this CapArena-Auto's data file?")
    captions, baseline = entry["captions"], entry.get("ref_model")
    if not isinstance(captions.get(HUMAN), str) or not captions[HUMAN].strip():
        raise InputError(f"{where} lacks the human reference caption (captions['human'])")
    if not isinstance(baseline, str) or not isinstance(captions.get(baseline), str):
        raise InputError(f"{where}: ref_model {baseline!r} must name one of its captions ({sorted(captions)})")
    image = None
    if images is not None:
        image = image_ref(images / name, "--images-dir must hold CapArena-Auto's images, named as its keys")
    others = {k: v for k, v in captions.items() if k not in (HUMAN, baseline)}
    return Sample(
        id=name,
        image=image,
        reference_caption=captions[HUMAN],
        domain="docci",
        meta={"other_captions": others} if others else {},
        baselines={baseline: captions[baseline]},
    )
