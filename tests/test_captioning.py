"""Caption generation: prompts, resumable caption sets, and `capbench eval --model` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ScriptedEngine, kill_after_lines

from capbench.captioning import DEFAULT_PROMPT, PARAPHRASES, CaptionConfig, Captioner
from capbench.cli import main
from capbench.data import load_benchmark
from capbench.engines.base import ImagePart, Response
from capbench.errors import ConfigError, InputError
from capbench.records import ImageRef, Sample, read_caption_file


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return list(load_benchmark("mini", with_images=True).samples[:5])


def _describer(request) -> str:
    """A fake captioner: names the image it was shown."""
    image = next(p for p in request.messages[0].parts if isinstance(p, ImagePart))
    return f"A picture with hash {image.image.sha256[:8]}."


def test_prompts_default_paraphrased_and_multi_view(samples):
    assert CaptionConfig().prompt_for(samples[0]) == DEFAULT_PROMPT
    drawn = [CaptionConfig(prompt="paraphrases", seed=1).prompt_for(s) for s in samples]
    assert drawn == [CaptionConfig(prompt="paraphrases", seed=1).prompt_for(s) for s in samples]
    assert set(drawn) <= set(PARAPHRASES)
    others = {CaptionConfig(prompt="paraphrases", seed=seed).prompt_for(samples[0]) for seed in range(20)}
    assert len(others) > 1  # the draw depends on the seed
    views = Sample("multi", ImageRef("a.png", "a" * 64), more_images=(ImageRef("b.png", "b" * 64),))
    request = CaptionConfig(prompt="Caption it.", max_tokens=77).request(views)
    parts = request.messages[0].parts
    assert [p.image.sha256[0] for p in parts[:2]] == ["a", "b"]
    assert parts[2].text == "You are viewing 2 related images. Caption it."
    assert request.sampling.max_tokens == 77 and request.sampling.temperature == 0.0


def test_a_sample_without_an_image_is_refused_by_name():
    with pytest.raises(InputError, match="'bare' has no image"):
        CaptionConfig().request(Sample("bare", None))


def test_generation_resumes_and_refuses_changed_settings(samples, tmp_path):
    engine = ScriptedEngine(_describer)
    first = Captioner(engine, {"model": "fake"}, CaptionConfig(), batch_size=2)
    report = first.generate(samples[:3], tmp_path, "fake")
    assert (report.generated, report.reused, report.failed) == (3, 0, {})
    assert len(engine.calls) == 3
    # more samples: only the new ones are generated
    report = first.generate(samples, tmp_path, "fake")
    assert (report.generated, report.reused) == (2, 3) and len(engine.calls) == 5
    stored = read_caption_file(tmp_path / "generated.jsonl")
    assert stored.captions == {s.id: _describer(CaptionConfig().request(s)) for s in samples}
    # other settings would mix two kinds of captions in one set
    hotter = Captioner(engine, {"model": "fake"}, CaptionConfig(temperature=0.7))
    with pytest.raises(ConfigError, match=r"config.temperature: 0.0 -> 0.7.*--regenerate"):
        hotter.generate(samples, tmp_path, "fake")
    report = hotter.generate(samples, tmp_path, "fake", overwrite=True)
    assert report.generated == 5 and len(engine.calls) == 10
    manifest = json.loads((tmp_path / "generation.json").read_text())
    assert manifest["settings"]["config"]["temperature"] == 0.7 and manifest["status"] == "complete"


def test_failed_and_empty_captions_are_reported_and_retried(samples, tmp_path):
    broken = {samples[1].id}

    def flaky(request):
        text = _describer(request)
        if any(s.image.sha256[:8] in text for s in samples if s.id in broken):
            return Response(error="server said no")
        return "   " if samples[2].image.sha256[:8] in text else text

    captioner = Captioner(ScriptedEngine(flaky), {"model": "fake"}, CaptionConfig())
    report = captioner.generate(samples[:3], tmp_path, "fake")
    assert report.failed == {samples[1].id: "server said no", samples[2].id: "the model wrote an empty caption"}
    assert list(report.caption_set.captions) == [samples[0].id]
    assert json.loads((tmp_path / "generation.json").read_text())["status"] == "failed"
    broken.clear()
    again = Captioner(ScriptedEngine(_describer), {"model": "fake"}, CaptionConfig()).generate(
        samples[:3], tmp_path, "fake"
    )
    assert (again.generated, again.reused, again.failed) == (2, 1, {})


# --- the hf engine with a tiny random Qwen2.5-VL, through `capbench eval --model` -----------------


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl")


def _caption_args(model: Path, results: Path, *extra: str) -> list[str]:
    return ["eval", "-b", "mini", "--model", str(model), "--engine", "hf", "--model-opt", "batch_size=2",
            "--caption-max-tokens", "8", "--limit", "3", "--results-dir", str(results), *extra]  # fmt: skip


@pytest.mark.engine
@pytest.mark.cli
@pytest.mark.gpu  # the hf engine's device "auto": CUDA in bfloat16 where there is one
def test_eval_model_captions_with_hf_then_scores_and_a_new_judge_reuses_the_captions(
    tiny_vlm, tmp_path, scripted_cli_engine
):
    runner = CliRunner()
    args = _caption_args(tiny_vlm, tmp_path, "--metrics", "captionqa", "--answer-mode", "letter", "--json")
    first = runner.invoke(main, [*args, "--judge", "scripted:A"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    generation = report["generation"]
    assert generation["name"] == "tiny-qwen2.5-vl" and generation["generated"] == 3 and generation["failed"] == {}
    captions = tmp_path / "mini" / "tiny-qwen2.5-vl" / "generated.jsonl"
    rows = [json.loads(line) for line in captions.read_text().splitlines()]
    assert [r["id"] for r in rows] == [s.id for s in load_benchmark("mini").samples[:3]]
    assert all(r["caption"].strip() and 0 < r["completion_tokens"] <= 8 for r in rows)
    assert report["runs"][0]["caption_set"] == "tiny-qwen2.5-vl" and report["runs"][0]["samples"] == 3
    manifest = json.loads((captions.parent / "generation.json").read_text())
    assert manifest["model"]["engine"] == "hf" and manifest["settings"]["engine"]["backend"] == "hf"
    assert manifest["settings"]["config"]["max_tokens"] == 8
    assert manifest["model"]["options"] == {"batch_size": 2}
    scores = json.loads((captions.parent / "manifest.json").read_text())
    assert scores["judge_specs"]["text"] == {"engine": "scripted", "model": "A", "options": {}}
    # another judge: the captions are kept, not generated again
    second = runner.invoke(main, [*args, "--judge", "scripted:B", "--overwrite"])
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)["generation"]
    assert (again["generated"], again["reused"]) == (0, 3)
    assert [json.loads(line) for line in captions.read_text().splitlines()] == rows
    # and the file is a caption set like any other
    again_dir = str(tmp_path / "again")
    reread = runner.invoke(main, ["eval", "-b", "mini", "-c", str(captions), "--judge", "scripted:A",
                                  "--answer-mode", "letter", "--results-dir", again_dir, "--json"])  # fmt: skip
    assert reread.exit_code == 0, reread.output
    assert json.loads(reread.stdout)["runs"][0]["samples"] == 3


@pytest.mark.engine
def test_generation_killed_mid_run_resumes_without_regenerating(tiny_vlm, tmp_path):
    # On the CPU wherever it runs: on a GPU the six captions can be done before the kill lands.
    def command(results: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "capbench.cli", *_caption_args(tiny_vlm, results, "--metrics", "none",
                "--batch-size", "1", "--limit", "6", "--model-opt", "device=cpu", *extra)]  # fmt: skip

    log = tmp_path / "mini" / "tiny-qwen2.5-vl" / "generated.jsonl"
    before = kill_after_lines(command(tmp_path), log, 2)
    assert 2 <= before < 6
    out = subprocess.run(command(tmp_path, "--json"), capture_output=True, text=True, check=True, env=os.environ)
    generation = json.loads(out.stdout)["generation"]
    assert (generation["reused"], generation["generated"]) == (before, 6 - before)
    ids = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert ids == [s.id for s in load_benchmark("mini").samples[:6]]
    clean = subprocess.run(command(tmp_path / "clean", "--json"), capture_output=True, text=True, check=True)
    assert json.loads(clean.stdout)["generation"]["generated"] == 6
    clean_rows = (tmp_path / "clean" / "mini" / "tiny-qwen2.5-vl" / "generated.jsonl").read_text()
    assert clean_rows == log.read_text()
