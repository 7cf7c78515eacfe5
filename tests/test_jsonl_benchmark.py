"""The generic ``jsonl`` benchmark: your own images, references, facts and questions, one reader for eval and RL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from capbench.data import load_benchmark
from capbench.errors import ConfigError, InputError

COLOURS = {"red.png": (200, 30, 30), "green.png": (30, 200, 30), "blue.png": (30, 30, 200)}

LINES = [
    {
        "id": "red-square",
        "image": "images/red.png",
        "caption": "A red square on its own.",
        "facts": ["The square is red.", "Nothing else is shown."],
        "questions": [
            {"question": "What colour is the square?", "choices": ["red", "blue"], "answer": "red",
             "category": "colour"},
            {"id": "q-shape", "question": "What shape is shown?", "choices": ["square", "circle", "star"],
             "answer": "square"},
        ],
        "domain": "shapes",
        "baselines": {"gpt-4o": "A red box.", "llava": "A square."},
    },
    {"image": "images/green.png", "reference_caption": "A green square.", "facts": ["It is green."]},
    {"id": 7, "image": "images/blue.png", "caption": "A blue square.", "extra": "ignored"},
]  # fmt: skip


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A JSONL file beside an images/ folder with three small real PNGs."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    for name, colour in COLOURS.items():
        Image.new("RGB", (12, 12), colour).save(tmp_path / "images" / name)
    return _write(tmp_path / "mine.jsonl", LINES)


def test_the_file_loads_as_samples(data: Path):
    bench = load_benchmark("jsonl", data_file=data)
    assert bench.name == "jsonl" and [s.id for s in bench.samples] == ["red-square", "line-2", "7"]
    red, green, blue = bench.samples
    assert all(s.image is None for s in bench.samples)  # images are read only when asked for
    assert red.reference_caption == "A red square on its own." and red.domain == "shapes"
    assert red.reference_facts == ("The square is red.", "Nothing else is shown.")
    assert [(q.id, q.answer, q.choices, q.category) for q in red.questions] == [
        ("1-0", "red", ("red", "blue"), "colour"),
        ("q-shape", "square", ("square", "circle", "star"), ""),
    ]
    assert red.baselines == {"gpt-4o": "A red box.", "llava": "A square."}
    assert green.reference_caption == "A green square." and green.reference_facts == ("It is green.",)
    assert green.questions == () and green.domain == "default" and blue.baselines == {}
    assert bench.domains == ["shapes", "default"]


def test_with_images_each_image_is_checked_and_hashed(data: Path, tmp_path: Path):
    bench = load_benchmark("jsonl", with_images=True, data_file=data)
    assert [Path(s.image.path).name for s in bench.samples] == list(COLOURS)
    assert len({s.image.sha256 for s in bench.samples}) == 3
    # with images_dir, paths start there instead of beside the file
    (tmp_path / "elsewhere").mkdir()
    moved = _write(tmp_path / "elsewhere" / "moved.jsonl", LINES)
    again = load_benchmark("jsonl", with_images=True, data_file=moved, images_dir=tmp_path)
    assert [s.image.sha256 for s in again.samples] == [s.image.sha256 for s in bench.samples]


def test_no_data_file_names_the_flag():
    with pytest.raises(ConfigError, match=r"benchmark 'jsonl' needs --data-file FILE"):
        load_benchmark("jsonl")


def _image(tmp_path: Path) -> str:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    return "ok.png"


GOOD = {"image": "ok.png", "caption": "A black square."}
QUESTION = {"question": "What colour?", "choices": ["black", "white"], "answer": "black"}

#: (case, the line written second after a good one, pattern the error holds after "file:2: ").
BAD_LINES = [
    ("no image", {"caption": "x"}, r"needs 'image'"),
    ("image not a string", {**GOOD, "image": 3}, r"needs 'image'"),
    ("missing image file", {**GOOD, "image": "gone.png"}, r"image .*gone\.png not found; fix the path"),
    ("not an image", {**GOOD, "image": "notes.txt"}, r"notes\.txt: not an image .*; replace the image or fix"),
    ("no caption", {"image": "ok.png"}, r"non-empty 'caption'"),
    ("empty caption", {**GOOD, "caption": "  "}, r"non-empty 'caption'"),
    ("caption and synonym differ", {**GOOD, "reference_caption": "Other."}, r"'reference_caption' differ"),
    ("duplicate id", {**GOOD, "id": "line-1"}, r"id 'line-1' is already used on line 1; give each line its own"),
    ("id not a string", {**GOOD, "id": ["a"]}, r"'id' is list; give a string"),
    ("facts not a list", {**GOOD, "facts": "It is black."}, r"'facts' must be a list of non-empty strings"),
    ("an empty fact", {**GOOD, "facts": ["ok", ""]}, r"'facts' must be a list"),
    ("questions not a list", {**GOOD, "questions": QUESTION}, r"'questions' must be a list"),
    ("question not an object", {**GOOD, "questions": ["What?"]}, r"question 1 is str; a question needs 'question'"),
    ("question without choices", {**GOOD, "questions": [{"question": "Q?", "answer": "a"}]},
     r"question 1 needs 'question', 'choices'"),
    ("one choice", {**GOOD, "questions": [{**QUESTION, "choices": ["black"]}]}, r"question 1 has 1 choice\(s\)"),
    ("repeated choices", {**GOOD, "questions": [{**QUESTION, "choices": ["black", "black"]}]},
     r"question 1: its choices repeat"),
    ("answer not a choice", {**GOOD, "questions": [QUESTION, {**QUESTION, "answer": "grey"}]},
     r"question 2: answer 'grey' is not one of its choices"),
    ("question ids repeat", {**GOOD, "questions": [{**QUESTION, "id": "a"}, {**QUESTION, "id": "a"}]},
     r"question 2: id 'a' is used twice"),
    ("domain not a string", {**GOOD, "domain": 3}, r"'domain' is int; give a string"),
    ("baselines not a mapping", {**GOOD, "baselines": ["gpt-4o"]}, r"'baselines' must map each model name"),
    ("empty baseline caption", {**GOOD, "baselines": {"gpt-4o": ""}}, r"'baselines' must map"),
    ("not JSON", "{'image': 'ok.png'}", r"not valid JSON"),
    ("not an object", '["ok.png", "A caption."]', r"expected a JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "line", "pattern"), BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_a_bad_line_is_one_line_naming_file_and_line(tmp_path: Path, case: str, line, pattern: str):
    _image(tmp_path)
    (tmp_path / "notes.txt").write_text("not a picture")
    path = _write(tmp_path / "bad.jsonl", [GOOD, line])
    with pytest.raises(InputError) as caught:
        load_benchmark("jsonl", with_images=True, data_file=path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:2: "), message
    assert re.search(pattern, message), message


def test_images_are_not_touched_without_with_images(tmp_path: Path):
    path = _write(tmp_path / "x.jsonl", [{**GOOD, "image": "gone.png"}])
    assert load_benchmark("jsonl", data_file=path).samples[0].image is None


@pytest.mark.parametrize(
    ("content", "pattern"),
    [(None, r"no such file"), ("", r"no samples; write one JSON object per line"), ("\n\n", r"no samples")],
)
def test_a_missing_or_empty_file_is_named(tmp_path: Path, content: str | None, pattern: str):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=pattern) as caught:
        load_benchmark("jsonl", data_file=path)
    assert str(path) in str(caught.value)


def test_a_folder_as_data_file_or_a_missing_images_dir_is_named(tmp_path: Path, data: Path):
    with pytest.raises(InputError, match=r"a folder, not a file; pass --data-file"):
        load_benchmark("jsonl", data_file=tmp_path)
    with pytest.raises(InputError, match=r"--images-dir .*nope: no such folder"):
        load_benchmark("jsonl", with_images=True, data_file=data, images_dir=tmp_path / "nope")


def test_rl_rows_from_the_same_file_carry_the_same_samples(data: Path):
    from capbench_rl.data import rows
    from capbench_rl.recipe import load_recipe

    bench = load_benchmark("jsonl", with_images=True, data_file=data)
    recipe = load_recipe("toy-cpu", ["model=m", "benchmark=null", f"data_file={data}", "rewards={dcscore: 1}",
                                     "limit=null"])  # fmt: skip
    got = rows(recipe)
    assert [r["sample_id"] for r in got] == [s.id for s in bench.samples]
    assert [r["reference_facts"] for r in got] == [list(s.reference_facts) for s in bench.samples]
    assert [r["questions"] for r in got] == [[q.to_dict() for q in s.questions] for s in bench.samples]
    assert [r["image_path"] for r in got] == [s.image.path for s in bench.samples]
    assert [(r["reference_caption"], r["domain"]) for r in got] == [
        (s.reference_caption, s.domain) for s in bench.samples
    ]
    # and as a benchmark named in the recipe, through the same loader
    named = rows(load_recipe("toy-cpu", ["model=m", "benchmark=jsonl", f"benchmark_file={data}",
                                         "rewards={dcscore: 1}", "limit=null"]))  # fmt: skip
    assert named == got


def test_rl_errors_keep_naming_file_and_line(tmp_path: Path):
    from capbench_rl.data import rows
    from capbench_rl.recipe import load_recipe

    path = _write(tmp_path / "train.jsonl", [{"image": "gone.png", "caption": "A square."}])
    recipe = load_recipe("toy-cpu", ["model=m", "benchmark=null", f"data_file={path}", "rewards={dcscore: 1}"])
    with pytest.raises(InputError, match=r"train\.jsonl:1: image .*gone\.png not found; fix the path"):
        rows(recipe)


#: The kinds of bad input this file covers (counted in benchmarks/results/robustness.md).
KINDS = tuple(f"jsonl line: {case[0]}" for case in BAD_LINES)
