"""capbench-mini: real photographs that pip packages ship, with references written for capbench.

The images are not copied into capbench: they are read at run time from scikit-image,
scikit-learn and matplotlib (``pip install 'capbench[mini]'``), converted once to PNG under
``$CAPBENCH_HOME/images/mini/``, and hashed by pixel content. Text-only metrics need no image,
so scoring captions with CaptionQA works without those packages. ``README.md`` beside this
file gives each image's origin and licence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from capbench.data import Benchmark
from capbench.errors import InputError, MissingDependencyError
from capbench.hashing import sha256_bytes
from capbench.home import capbench_home
from capbench.records import ImageRef, Question, Sample, read_caption_file, read_jsonl

NAME = "mini"
DESCRIPTION = "capbench-mini: 18 real photographs bundled with capbench (offline)"
EXAMPLE_SETS = ("detailed", "short", "planted_errors")


def _data_dir() -> Path:
    return Path(str(resources.files("capbench.data.mini")))


def load(with_images: bool = False) -> Benchmark:
    """Load capbench-mini; with ``with_images``, materialise and hash every image."""
    examples = {name: _data_dir() / "captions" / f"{name}.jsonl" for name in EXAMPLE_SETS}
    baselines = _baselines(examples)
    samples = []
    path = _data_dir() / "samples.jsonl"
    for number, obj in read_jsonl(path):
        try:
            samples.append(_sample(obj, with_images, baselines.get(obj["id"], {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}:{number}: malformed sample ({exc})") from None
    return Benchmark(NAME, tuple(samples), DESCRIPTION, examples)


def _baselines(examples: Mapping[str, Path]) -> dict[str, dict[str, str]]:
    """Return, per image, the example sets' captions: the fixed baselines of pairwise judging."""
    out: dict[str, dict[str, str]] = {}
    for name, path in examples.items():
        for sample_id, text in read_caption_file(path).captions.items():
            out.setdefault(sample_id, {})[name] = text
    return out


def _sample(obj: Mapping[str, Any], with_images: bool, baselines: Mapping[str, str]) -> Sample:
    questions = tuple(Question.from_dict(q) for q in obj["questions"])
    image = materialize(obj["id"], obj["image"]) if with_images else None
    return Sample(
        id=obj["id"],
        image=image,
        reference_caption=obj["reference_caption"],
        reference_facts=tuple(obj["reference_facts"]),
        questions=questions,
        domain=obj["domain"],
        meta={"image_source": obj["image"]},
        baselines=dict(baselines),
    )


def materialize(sample_id: str, source: Mapping[str, Any]) -> ImageRef:
    """Return the PNG of one image under ``$CAPBENCH_HOME``, writing it on first use."""
    folder = capbench_home() / "images" / NAME
    png = folder / f"{sample_id}.png"
    digest_file = folder / f"{sample_id}.sha256"
    if png.is_file() and digest_file.is_file():
        return ImageRef(str(png), digest_file.read_text().strip())
    from PIL import Image

    pixels = _read_pixels(source)
    expected = tuple(source["size"])
    if (pixels.shape[1], pixels.shape[0]) != expected:
        raise InputError(
            f"capbench-mini image {sample_id!r}: {source['package']} ships a {pixels.shape[1]}x{pixels.shape[0]} "
            f"image, but the references were written for {expected[0]}x{expected[1]}; "
            "see capbench/data/mini/README.md for the images capbench-mini expects"
        )
    image = Image.fromarray(pixels)
    digest = sha256_bytes(f"{image.mode}:{image.size}:".encode() + image.tobytes())
    folder.mkdir(parents=True, exist_ok=True)
    tmp = png.with_suffix(".png.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(png)
    digest_file.write_text(digest + "\n")
    return ImageRef(str(png), digest)


def _read_pixels(source: Mapping[str, Any]) -> Any:
    """Read one image's pixels from the package that ships it."""
    package, name = source["package"], source["name"]
    try:
        if package == "scikit-image":
            import skimage.data

            pixels = getattr(skimage.data, name)()
            return pixels[0] if name == "stereo_motorcycle" else pixels
        if package == "scikit-learn":
            from sklearn.datasets import load_sample_image

            return load_sample_image(name)
        if package == "matplotlib":
            import numpy as np
            from matplotlib import cbook
            from PIL import Image

            with cbook.get_sample_data(name) as handle:
                return np.asarray(Image.open(handle).convert("RGB"))
    except ImportError:
        raise MissingDependencyError(package, "mini", "capbench-mini's images") from None
    raise InputError(f"capbench-mini: unknown image package {package!r}")


def read_sources() -> list[dict[str, Any]]:
    """Return every sample's image source record (package, name, licence, attribution)."""
    return [dict(obj["image"], id=obj["id"]) for _, obj in read_jsonl(_data_dir() / "samples.jsonl")]


def dump(records: list[dict[str, Any]]) -> str:
    """Serialise sample records as JSONL (used to regenerate ``samples.jsonl``)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
