"""The DeCapBench loader, on fixtures in the official format (the real file ships too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capbench.data import load_benchmark
from capbench.errors import ConfigError, InputError


def _write_reference(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "human_annotated_oracle_facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"image_name": "aar_test_00001.jpg", "oracle_caption": "A red door.",
     "oracle_facts": ["There is a door.", "The door is red."]},
    {"image_name": "aar_test_00002.jpg", "oracle_caption": "Two cats.", "oracle_facts": ["There are two cats."]},
]  # fmt: skip


def test_fixture_in_the_official_format(tmp_path: Path):
    bench = load_benchmark("decapbench", data_file=_write_reference(tmp_path, ROWS))
    assert [s.id for s in bench.samples] == ["aar_test_00001.jpg", "aar_test_00002.jpg"]
    assert bench.samples[0].reference_facts == ("There is a door.", "The door is red.")
    assert bench.samples[0].reference_caption == "A red door." and bench.samples[0].image is None


def test_images_from_a_folder(tmp_path: Path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for row in ROWS:
        Image.new("RGB", (8, 8), "red").save(images / row["image_name"])
    bench = load_benchmark(
        "decapbench", with_images=True, images_dir=images, data_file=_write_reference(tmp_path, ROWS)
    )
    assert bench.samples[1].image.path == str(images / "aar_test_00002.jpg")
    assert len(bench.samples[1].image.sha256) == 64
    (images / "aar_test_00002.jpg").unlink()
    with pytest.raises(InputError, match=r"aar_test_00002\.jpg: image missing"):
        load_benchmark("decapbench", with_images=True, images_dir=images, data_file=_write_reference(tmp_path, ROWS))


def test_images_need_a_folder():
    with pytest.raises(ConfigError, match="pass --images-dir"):
        load_benchmark("decapbench", with_images=True)


def test_a_file_in_another_format(tmp_path: Path):
    with pytest.raises(InputError, match="lacks 'oracle_facts'"):
        load_benchmark("decapbench", data_file=_write_reference(tmp_path, [{"image_name": "x", "oracle_caption": "y"}]))


def test_the_shipped_data_file():
    bench = load_benchmark("decapbench")
    assert len(bench.samples) == 400
    assert sum(len(s.reference_facts) for s in bench.samples) == 21215
    assert all(s.id.startswith("aar_test_") for s in bench.samples)


def test_options_a_benchmark_does_not_take():
    with pytest.raises(ConfigError, match="benchmark 'mini' takes no --images-dir"):
        load_benchmark("mini", images_dir="/tmp")
