"""The CapArena-Auto loader on a fixture in the official caparena_auto_600.json format, and its scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capbench.cli import main
from capbench.data import load_benchmark
from capbench.errors import ConfigError, InputError
from capbench.metrics.arena import single_order

BASELINES = ("GPT-4o-0806", "CogVLM2-llama3-chat-19B")


def _entries(n: int = 6) -> dict:
    """n images; baselines alternate, as the official file assigns one baseline per image."""
    entries = {}
    for i in range(n):
        baseline = BASELINES[i % 2]
        entries[f"test_{i:05d}.jpg"] = {
            "captions": {
                "human": f"A human description of image {i}: a street with {i} cars.",
                baseline: f"Baseline caption {i}.",
                "LLaVA-1.5-7B": f"Another model's caption {i}.",
            },
            "ref_model": baseline,
        }
    return entries


def _write(tmp_path: Path, entries: dict) -> Path:
    path = tmp_path / "caparena_auto_600.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_loader_reads_the_official_format(tmp_path: Path):
    bench = load_benchmark("caparena", data_file=_write(tmp_path, _entries()))
    assert [s.id for s in bench.samples][:2] == ["test_00000.jpg", "test_00001.jpg"]
    first = bench.samples[0]
    assert first.reference_caption.startswith("A human description of image 0")
    assert first.baselines == {"GPT-4o-0806": "Baseline caption 0."}
    assert bench.samples[1].baselines == {"CogVLM2-llama3-chat-19B": "Baseline caption 1."}
    assert first.meta["other_captions"] == {"LLaVA-1.5-7B": "Another model's caption 0."}


def test_loader_finds_images(tmp_path: Path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for index, name in enumerate(_entries(2)):
        Image.new("RGB", (8, 8), (index * 100, 0, 0)).save(images / name)
    bench = load_benchmark("caparena", with_images=True, images_dir=images, data_file=_write(tmp_path, _entries(2)))
    assert all(s.image is not None and len(s.image.sha256) == 64 for s in bench.samples)
    (images / "test_00001.jpg").unlink()
    with pytest.raises(InputError, match=r"test_00001.jpg: image missing"):
        load_benchmark("caparena", with_images=True, images_dir=images, data_file=_write(tmp_path, _entries(2)))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"a.jpg": {"captions": {"GPT-4o-0806": "x"}, "ref_model": "GPT-4o-0806"}}, "lacks the human reference"),
        ({"a.jpg": {"captions": {"human": "h"}, "ref_model": "GPT-4o-0806"}}, "ref_model 'GPT-4o-0806' must name"),
        ({"a.jpg": {"ref_model": "x"}}, "has no 'captions' object"),
        ([], "expected a JSON object keyed by image file name"),
    ],
)
def test_loader_names_what_is_wrong(tmp_path: Path, entries, message: str):
    with pytest.raises(InputError, match=message):
        load_benchmark("caparena", data_file=_write(tmp_path, entries))


def test_loader_says_the_data_is_a_download():
    with pytest.raises(ConfigError, match=r"--data-file caparena_auto_600\.json"):
        load_benchmark("caparena")


def test_caparena_auto_score_with_a_known_answer(tmp_path: Path, scripted_cli_engine):
    """A judge that always says "Caption 1 is better", one seeded order per image (the official protocol).

    The tested model wins exactly where it is shown first, so each baseline's score is
    100 × (firsts − seconds) / images, computable from the seeded draws.
    """
    data = _write(tmp_path, _entries(12))
    captions = tmp_path / "model.jsonl"
    captions.write_text("".join(json.dumps({"id": k, "caption": f"My caption of {k}."}) + "\n" for k in _entries(12)))
    reply = '{"reason": "r", "judgment": "Caption 1 is better"}'
    argv = ["eval", "-b", "caparena", "--data-file", str(data), "-c", str(captions), "-m", "arena",
            "--arena-order", "single", "--seed", "5", "--judge", f"scripted:{reply}",
            "--results-dir", str(tmp_path / "r"), "--json"]  # fmt: skip
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["runs"][0]["metrics"]["arena"]
    expected = {}
    for baseline in BASELINES:
        images = [k for i, k in enumerate(_entries(12)) if BASELINES[i % 2] == baseline]
        first = sum(single_order(5, k, "model", baseline) for k in images)
        expected[baseline] = 100 * (first - (len(images) - first)) / len(images)
        assert summary["baselines"][baseline]["score"] == pytest.approx(expected[baseline])
        assert summary["baselines"][baseline]["pairs"] == 6
    assert summary["score"] == pytest.approx(sum(expected.values()) / 2)
    assert summary["length"] == pytest.approx(4.0)
