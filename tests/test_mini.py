"""capbench-mini: the bundled references are complete, and its images load from the packages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from capbench.data import load_benchmark
from capbench.metrics.captionqa import is_yes_no
from capbench.records import read_caption_file


@pytest.fixture(scope="module")
def mini():
    return load_benchmark("mini")


def test_references_meet_the_spec(mini):
    assert len(mini.samples) >= 16
    assert len(mini.domains) >= 2
    for sample in mini.samples:
        assert 100 <= len(sample.reference_caption.split()) <= 200, sample.id
        assert len(sample.reference_facts) >= 15, sample.id
        assert len(set(sample.reference_facts)) == len(sample.reference_facts), sample.id
        assert len(sample.questions) >= 12, sample.id
        for q in sample.questions:
            yes_no = is_yes_no(q.question, q.choices)
            assert 3 <= len(q.choices) <= 5 or (yes_no and sorted(q.choices) == ["No", "Yes"]), q.id
            assert q.category in {"object", "attribute", "count", "position", "text", "scene"}, q.id
    ids = [q.id for s in mini.samples for q in s.questions]
    assert len(ids) == len(set(ids))


def test_example_caption_sets_cover_every_image(mini):
    ids = {s.id for s in mini.samples}
    lengths = {}
    for name, path in mini.example_captions.items():
        captions = read_caption_file(path)
        assert set(captions.captions) == ids, name
        lengths[name] = sum(len(c.split()) for c in captions.captions.values()) / len(ids)
    assert lengths["short"] < 20 < lengths["detailed"]


def test_images_materialise_once_and_hash_by_pixels(mini, capbench_home):
    with_images = load_benchmark("mini", with_images=True)
    for sample in with_images.samples:
        assert sample.image is not None and sample.image.path.endswith(f"{sample.id}.png")
    from PIL import Image

    sizes = {s.id: Image.open(s.image.path).size for s in with_images.samples}
    expected = {s.id: tuple(s.meta["image_source"]["size"]) for s in mini.samples}
    assert sizes == expected
    assert len({s.image.sha256 for s in with_images.samples}) == len(with_images.samples)
    # a second load reads the converted files and imports none of the image packages
    script = (
        "import sys; from capbench.data import load_benchmark\n"
        "b = load_benchmark('mini', with_images=True)\n"
        "print(sorted(m for m in ('skimage', 'sklearn', 'matplotlib') if m in sys.modules))\n"
        "print(b.samples[0].image.sha256)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == with_images.samples[0].image.sha256
