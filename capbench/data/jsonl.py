"""Your own benchmark: a JSONL file of images with reference captions, facts and questions.

The same file ``capbench-rl`` trains on (its recipe's ``data_file``), so a model is evaluated
on the data it was trained with by one reader. One JSON object per line::

    {"id": "kitchen-1", "image": "images/kitchen.jpg", "caption": "A small kitchen with ...",
     "facts": ["The kettle is red."], "domain": "indoor",
     "questions": [{"question": "What colour is the kettle?", "choices": ["red", "blue"], "answer": "red"}],
     "baselines": {"gpt-4o": "A kitchen with a red kettle."}}

``image`` is a path relative to the file (or to ``images_dir`` when given); ``caption`` (or
``reference_caption``) is the human reference caption. The rest is optional: ``id`` (default
``line-N``), ``facts`` (reference facts, for DCScore and the BalCap recall), ``questions``
(multiple choice, ``answer`` being the text of one choice; ``id`` defaults to ``N-K``, the
line and the question's index), ``domain`` and ``baselines`` (model name -> caption, for
pairwise judging). Other keys are ignored, so ShareGPT4V-style files flattened to these keys
work as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capbench.data import Benchmark, image_ref, images_folder
from capbench.errors import ConfigError, InputError
from capbench.records import ImageRef, Question, Sample, read_jsonl

NAME = "jsonl"
DESCRIPTION = "your own JSONL of images with reference captions, facts and questions (--data-file)"


def load(
    with_images: bool = False,
    data_file: str | os.PathLike[str] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
) -> Benchmark:
    """Load the samples of a JSONL file; with ``with_images``, check and hash each image.

    Raises:
        ConfigError: no ``data_file`` given.
        InputError: a line that is not a usable sample; the message names the file, the line and the fix.
    """
    if data_file is None:
        raise ConfigError(
            "benchmark 'jsonl' needs --data-file FILE: a JSONL file with one "
            '{"image": path, "caption": reference} object per line (see docs/benchmarks.md)'
        )
    path = Path(data_file).expanduser()
    if path.is_dir():
        raise InputError(f"{path}: a folder, not a file; pass --data-file the JSONL file of your samples")
    base = images_folder(images_dir) if images_dir is not None else path.parent
    samples: list[Sample] = []
    first_line: dict[str, int] = {}
    for number, obj in read_jsonl(path):
        sample = _sample(f"{path}:{number}", number, obj, base if with_images else None)
        if sample.id in first_line:
            raise InputError(
                f"{path}:{number}: id {sample.id!r} is already used on line {first_line[sample.id]}; "
                "give each line its own id"
            )
        first_line[sample.id] = number
        samples.append(sample)
    if not samples:
        raise InputError(f"{path}: no samples; write one JSON object per line with 'image' and 'caption'")
    return Benchmark(NAME, tuple(samples), DESCRIPTION)


def _sample(where: str, number: int, obj: Mapping[str, Any], images: Path | None) -> Sample:
    """Build the sample of line ``number`` (``where`` is "file:line"); ``images`` is where paths start, if read."""
    image = obj.get("image")
    if not isinstance(image, str) or not image.strip():
        raise InputError(f"{where}: needs 'image' (a path, relative to the file) and a non-empty 'caption'")
    return Sample(
        id=_id(where, obj.get("id"), f"line-{number}"),
        image=_image(where, image, images) if images is not None else None,
        reference_caption=_caption(where, obj),
        reference_facts=_facts(where, obj.get("facts")),
        questions=_questions(where, number, obj.get("questions")),
        domain=_text(where, "domain", obj.get("domain")) or "default",
        baselines=_baselines(where, obj.get("baselines")),
    )


def _id(where: str, value: Any, default: str) -> str:
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where}: 'id' is {type(value).__name__}; give a string (or leave it out for {default!r})")
    return str(value)


def _image(where: str, image: str, base: Path) -> ImageRef:
    path = Path(image).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise InputError(f"{where}: image {path} not found; fix the path (relative to {base})")
    try:
        return image_ref(path, "replace the image or fix the path")
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def _caption(where: str, obj: Mapping[str, Any]) -> str:
    caption, synonym = obj.get("caption"), obj.get("reference_caption")
    if caption is not None and synonym is not None and caption != synonym:
        raise InputError(f"{where}: 'caption' and 'reference_caption' differ; give the reference caption once")
    caption = caption if caption is not None else synonym
    if not isinstance(caption, str) or not caption.strip():
        raise InputError(f"{where}: needs 'image' (a path) and a non-empty 'caption' (the reference caption)")
    return caption


def _text(where: str, key: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{where}: '{key}' is {type(value).__name__}; give a string")
    return value


def _facts(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(f, str) and f.strip() for f in value):
        raise InputError(f"{where}: 'facts' must be a list of non-empty strings, one reference fact each")
    return tuple(value)


def _questions(where: str, number: int, value: Any) -> tuple[Question, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InputError(f"{where}: 'questions' must be a list of {{question, choices, answer}} objects")
    out: list[Question] = []
    for index, raw in enumerate(value):
        question = _question(f"{where}: question {index + 1}", raw, f"{number}-{index}")
        if any(q.id == question.id for q in out):
            raise InputError(f"{where}: question {index + 1}: id {question.id!r} is used twice; give each its own")
        out.append(question)
    return tuple(out)


def _question(where: str, raw: Any, default_id: str) -> Question:
    need = "needs 'question', 'choices' (a list of at least 2) and 'answer' (the text of one choice)"
    if not isinstance(raw, dict):
        raise InputError(f"{where} is {type(raw).__name__}; a question {need}")
    text, choices, answer = raw.get("question"), raw.get("choices"), raw.get("answer")
    plain = (str, int, float)
    if (
        not isinstance(text, str)
        or not text.strip()
        or not isinstance(choices, list)
        or not all(isinstance(c, plain) and not isinstance(c, bool) for c in choices)
        or not isinstance(answer, plain)
        or isinstance(answer, bool)
    ):
        raise InputError(f"{where} {need}")
    names = [str(c) for c in choices]
    if len(names) < 2:
        raise InputError(f"{where} has {len(names)} choice(s); give at least 2")
    if len(set(names)) < len(names):
        raise InputError(f"{where}: its choices repeat ({names}); give each choice once")
    if str(answer) not in names:
        raise InputError(f"{where}: answer {str(answer)!r} is not one of its choices {names}; make it the text of one")
    return Question(
        id=_id(where, raw.get("id"), default_id),
        question=text,
        choices=tuple(names),
        answer=str(answer),
        category=_text(where, "category", raw.get("category")),
    )


def _baselines(where: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(c, str) and c.strip() for c in value.values()):
        raise InputError(f"{where}: 'baselines' must map each model name to its non-empty caption")
    return dict(value)
