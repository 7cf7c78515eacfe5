"""``tinyshapes``: three drawn pictures with reference captions (a benchmark from a plugin)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from capbench import Benchmark, ImageRef, Sample

ITEMS = {
    "red-square": ("red", "A red square on a white background."),
    "blue-square": ("blue", "A blue square drawn in the middle of a plain white picture."),
    "green-square": ("green", "A small green square."),
}


def load(with_images: bool = False) -> Benchmark:
    """tinyshapes: three drawn squares with reference captions (example plugin)."""
    samples = []
    for sample_id, (colour, caption) in ITEMS.items():
        image = _draw(sample_id, colour) if with_images else None
        samples.append(Sample(sample_id, image, reference_caption=caption))
    return Benchmark("tinyshapes", tuple(samples), "three drawn squares (example plugin)")


def _draw(sample_id: str, colour: str) -> ImageRef:
    from PIL import Image, ImageDraw

    folder = Path(tempfile.gettempdir()) / "capbench-tinyshapes"
    folder.mkdir(exist_ok=True)
    path = folder / f"{sample_id}.png"
    if not path.exists():
        picture = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(picture).rectangle((16, 16, 48, 48), fill=colour)
        picture.save(path)
    return ImageRef(str(path), hashlib.sha256(path.read_bytes()).hexdigest())
