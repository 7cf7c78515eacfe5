"""DeCapBench (the DCScore benchmark): 400 IIW images with human reference captions and facts.

The reference file ships with capbench (``human_annotated_oracle_facts.jsonl``, exactly as the
benchmark's public repository publishes it; CC BY 4.0, from ImageInWords and DOCCI). The images
do not: they are DOCCI's "AAR" images, which users download themselves and point to with
``--images-dir``. Text-only judging (verification against the reference caption) needs no image.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from capbench.data import Benchmark, image_ref, images_folder
from capbench.errors import ConfigError, InputError
from capbench.records import Sample, read_jsonl

NAME = "decapbench"
DESCRIPTION = "DeCapBench: 400 IIW images, human reference captions and 21,215 reference facts (DCScore)"


def default_data_file() -> Path:
    """The reference file that ships with capbench."""
    return Path(str(resources.files("capbench.data.decapbench"))) / "human_annotated_oracle_facts.jsonl"


def load(
    with_images: bool = False,
    images_dir: str | os.PathLike[str] | None = None,
    data_file: str | os.PathLike[str] | None = None,
) -> Benchmark:
    """Load DeCapBench from its reference file; with ``with_images``, find each image in ``images_dir``."""
    path = Path(data_file) if data_file is not None else default_data_file()
    if with_images and images_dir is None:
        raise ConfigError(
            "DeCapBench's images are not bundled: pass --images-dir with DOCCI's AAR images (aar_test_*.jpg)"
        )
    folder = images_folder(images_dir) if with_images and images_dir is not None else None
    samples = []
    for number, obj in read_jsonl(path):
        try:
            name, caption, facts = obj["image_name"], obj["oracle_caption"], obj["oracle_facts"]
        except KeyError as exc:
            raise InputError(f"{path}:{number}: lacks {exc.args[0]!r}; is this DeCapBench's reference file?") from None
        if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
            raise InputError(f"{path}:{number}: 'oracle_facts' must be a list of strings")
        fix = "--images-dir must hold DOCCI's AAR images, named as in DeCapBench"
        image = image_ref(folder / name, fix) if folder is not None else None
        samples.append(
            Sample(id=name, image=image, reference_caption=caption, reference_facts=tuple(facts), domain="iiw")
        )
    return Benchmark(NAME, tuple(samples), DESCRIPTION)
