"""The CaptionQA loader on a small dataset in the official format, offline, scored end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from captionqa_fixture import ENTRIES, build_captionqa_repo
from conftest import ScriptedEngine

from capbench.data import load_benchmark
from capbench.data.captionqa import NO_MATCH, TOO_FEW_CHOICES, skipped_questions
from capbench.engines.cache import CachedEngine, ResponseCache
from capbench.errors import ConfigError, InputError, MissingDependencyError
from capbench.evaluation import Evaluator
from capbench.hashing import sha256_file
from capbench.metrics import build_metric
from capbench.metrics.parsing import LETTERS
from capbench.records import CaptionSet

pytest.importorskip("datasets")

BOTH = "natural,document"


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the hub out of reach and every datasets cache inside the test's folder."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # Both libraries read these once, at import: set the values they already hold too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_captionqa_repo(tmp_path_factory.mktemp("captionqa"))


def test_samples_questions_and_domains(repo: Path):
    bench = load_benchmark("captionqa", dataset=str(repo), split=BOTH)
    assert bench.name == "captionqa"
    assert [s.id for s in bench.samples] == ["nat_001", "nat_002", "nat_003", "doc_001", "doc_002"]
    assert bench.domains == ["natural", "document"]
    by_id = bench.by_id()
    nat = by_id["nat_001"]
    # question 2's answer matches no choice: skipped, and the others keep their positions
    assert [q.id for q in nat.questions] == ["nat_001/0", "nat_001/1", "nat_001/3"]
    assert [q.answer for q in nat.questions] == ["A cat", "Yes", "One"]  # " One " matched after strip
    assert [q.answer_index for q in nat.questions] == [1, 0, 0]
    assert [q.category for q in nat.questions] == ["object", "action", ""]  # first of the list; empty list -> ""
    assert nat.questions[1].choices == ("Yes", "No")
    assert by_id["doc_002"].questions[1].answer == "No"
    assert nat.meta["image_paths"] == ["images/natural/nat_001_0.png"]


def test_skipped_questions_are_listed_and_counted(repo: Path):
    bench = load_benchmark("captionqa", dataset=str(repo), split=BOTH)
    assert skipped_questions(bench) == [
        ("nat_001", 2, NO_MATCH),
        ("nat_002", 1, TOO_FEW_CHOICES),
        ("nat_003", 0, NO_MATCH),
    ]
    assert "3 skipped" in bench.description and "7 questions" in bench.description
    # an entry with no usable question is still a sample: it can be captioned
    assert bench.by_id()["nat_003"].questions == ()


def test_one_split_and_order_of_a_list(repo: Path):
    assert [s.id for s in load_benchmark("captionqa", dataset=str(repo), split="document").samples] == [
        "doc_001",
        "doc_002",
    ]
    reordered = load_benchmark("captionqa", dataset=str(repo), split="document, natural")
    assert reordered.domains == ["document", "natural"]


def test_without_images_no_image_is_read_or_written(repo: Path, capbench_home: Path):
    bench = load_benchmark("captionqa", dataset=str(repo), split=BOTH)
    assert all(s.image is None and s.more_images == () for s in bench.samples)
    assert not (capbench_home / "images").exists()


def test_images_are_written_once_by_content(repo: Path, capbench_home: Path):
    bench = load_benchmark("captionqa", dataset=str(repo), split=BOTH, with_images=True)
    by_id = bench.by_id()
    assert len(by_id["nat_002"].images) == 2 and len(by_id["nat_002"].more_images) == 1
    assert all(len(s.images) == 1 for s in bench.samples if s.id != "nat_002")
    refs = [ref for s in bench.samples for ref in s.images]
    for ref in refs:
        path = Path(ref.path)
        assert path.parent == capbench_home / "images" / "captionqa"
        assert path.name == f"{ref.sha256}.png"
        assert sha256_file(ref.path) == ref.sha256
    assert by_id["nat_001"].image == by_id["nat_003"].image  # the same picture, one file
    folder = capbench_home / "images" / "captionqa"
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert len(files) == len({r.sha256 for r in refs}) == 5  # 6 images, 5 distinct, no temporary left
    again = load_benchmark("captionqa", dataset=str(repo), split=BOTH, with_images=True)
    assert again.samples == bench.samples
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == files  # nothing rewritten


def test_unknown_split_is_refused():
    with pytest.raises(ConfigError, match="natural, document, ecommerce, embodiedai"):
        load_benchmark("captionqa", dataset="unused", split="nature")


def test_a_split_the_dataset_lacks_names_it(repo: Path):
    with pytest.raises(InputError, match="no split 'ecommerce'"):
        load_benchmark("captionqa", dataset=str(repo))  # "all": the fixture has two of the four


def test_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"no such folder.*hf download"):
        load_benchmark("captionqa", dataset=str(tmp_path / "nowhere"), split="natural")


def test_unknown_hub_id_offline_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"'capbench-tests/no-such-dataset' cannot be loaded.*hf download"):
        load_benchmark("captionqa", dataset="capbench-tests/no-such-dataset", split="natural")


def test_folder_without_the_data_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_benchmark("captionqa", dataset=str(tmp_path / "empty"), split="natural")


def test_duplicate_id_across_splits_is_refused(tmp_path: Path):
    twice = {"natural": ENTRIES["natural"][:1], "document": ENTRIES["natural"][:1]}
    folder = build_captionqa_repo(tmp_path / "dup", twice)
    with pytest.raises(InputError, match="'nat_001' appears in split 'natural' and again in 'document'"):
        load_benchmark("captionqa", dataset=str(folder), split=BOTH)


def test_missing_datasets_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MissingDependencyError, match=r"capbench\[captionqa\]"):
        load_benchmark("captionqa", split="natural")


def _right_answer(request) -> str:
    """A judge that knows every answer of the fixture and picks its letter."""
    text = request.messages[-1].joined_text()
    options = [line[3:] for line in text.splitlines() if len(line) > 2 and line[1:3] == ". " and line[0] in LETTERS]
    answers = {
        q["question"]: q["answer"].strip() for e in [*ENTRIES["natural"], *ENTRIES["document"]] for q in e["questions"]
    }
    answer = next(a for q, a in answers.items() if q in text)
    return LETTERS[options.index(answer)]


def test_scored_end_to_end_with_the_captionqa_metric(repo: Path, tmp_path: Path):
    bench = load_benchmark("captionqa", dataset=str(repo), split=BOTH)
    engine = ScriptedEngine(_right_answer)
    evaluator = Evaluator(
        bench, [build_metric("captionqa")], {"text": CachedEngine(engine, ResponseCache())}, tmp_path / "results"
    )
    captions = CaptionSet("model", {s.id: f"A caption of {s.id}." for s in bench.samples})
    result = evaluator.evaluate(captions)
    summary = result.summaries["captionqa"]
    assert len(engine.calls) == 7  # one per kept question; skipped ones are never asked
    assert (summary["questions"], summary["scored"]) == (7, 7)
    assert summary["score"] == pytest.approx(100.0)
    assert set(summary["domains"]) == {"natural", "document"}
    assert summary["domains"]["natural"]["questions"] == 4
    assert (tmp_path / "results" / "captionqa" / "model" / "captionqa.jsonl").is_file()
