"""A small CaptionQA dataset in the official format, written as ``hf download`` would leave it.

The folder holds ``README.md`` with the dataset card's YAML (features and ``configs``) and
``data/<split>-00000-of-00001.parquet`` written by ``datasets`` with the official features, so
``datasets.load_dataset(folder, split=...)`` reads it exactly as it reads ``Borise/CaptionQA``.
Images are real photographs from scikit-image, shrunk to 64 px.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _q(question: str, choices: list[str], answer: str, category: list[str]) -> dict[str, Any]:
    return {"question": question, "choices": choices, "answer": answer, "category": category, "source": "fixture"}


#: Split -> entries; ``images`` name scikit-image pictures. Comments say what each entry tests.
ENTRIES: dict[str, list[dict[str, Any]]] = {
    "natural": [
        {
            "id": "nat_001",
            "images": ["chelsea"],
            "questions": [
                _q("What animal is in the photo?", ["A dog", "A cat", "A rabbit"], "A cat", ["object"]),
                _q("Is the cat looking at the camera?", ["Yes", "No"], "Yes", ["action", "pose"]),  # yes/no
                _q("What colour is its collar?", ["Red", "Blue", "Green"], "Purple", ["attribute"]),  # no match
                _q("How many animals are there?", ["One", "Two"], " One ", []),  # answer padded, no category
            ],
        },
        {
            "id": "nat_002",
            "images": ["astronaut", "rocket"],  # a multi-image entry
            "questions": [
                _q(
                    "What is the person wearing?",
                    ["A spacesuit", "A lab coat", "A wetsuit"],
                    "A spacesuit",
                    ["attribute"],
                ),
                _q("What is shown?", ["a rocket"], "a rocket", ["object"]),  # one choice
            ],
        },
        {
            "id": "nat_003",
            "images": ["chelsea"],  # the same picture as nat_001: one file on disk
            "questions": [_q("What breed is it?", ["Tabby", "Siamese"], "Persian", ["object"])],  # none usable
        },
    ],
    "document": [
        {
            "id": "doc_001",
            "images": ["text"],
            "questions": [_q("Is there printed text?", ["Yes", "No"], "Yes", ["text"])],
        },
        {
            "id": "doc_002",
            "images": ["camera"],
            "questions": [
                _q("What does the photo show?", ["A cameraman", "A menu", "A map"], "A cameraman", ["object"]),
                _q("Is it in colour?", ["Yes", "No"], "No", ["attribute"]),
            ],
        },
    ],
}


def features() -> Any:
    """Return the dataset's features, as its card declares them."""
    from datasets import Features, Image, List, Value

    question = {
        "answer": Value("string"),
        "category": List(Value("string")),
        "choices": List(Value("string")),
        "question": Value("string"),
        "source": Value("string"),
    }
    return Features(
        {
            "id": Value("string"),
            "images": List(Image()),
            "questions": List(question),
            "domain": Value("string"),
            "image_paths": List(Value("string")),
        }
    )


@functools.cache
def png(name: str) -> bytes:
    """Return scikit-image's picture ``name`` as PNG bytes, at most 64 px on a side."""
    import skimage.data
    from PIL import Image

    image = Image.fromarray(getattr(skimage.data, name)())
    image.thumbnail((64, 64))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


_FEATURES_YAML = """\
dataset_info:
  features:
  - name: id
    dtype: string
  - name: images
    list: image
  - name: questions
    list:
    - name: answer
      dtype: string
    - name: category
      list: string
    - name: choices
      list: string
    - name: question
      dtype: string
    - name: source
      dtype: string
  - name: domain
    dtype: string
  - name: image_paths
    list: string
"""


def readme(sizes: Mapping[str, tuple[int, int]]) -> str:
    """Return the dataset card of a dataset whose splits have these (bytes, entries)."""
    splits = "".join(
        f"  - name: {name}\n    num_bytes: {size}\n    num_examples: {n}\n" for name, (size, n) in sizes.items()
    )
    files = "".join(f"  - split: {name}\n    path: data/{name}-*\n" for name in sizes)
    configs = f"configs:\n- config_name: default\n  data_files:\n{files}"
    return f"---\n{_FEATURES_YAML}  splits:\n{splits}{configs}---\n\n# CaptionQA (test fixture)\n"


def build_captionqa_repo(folder: Path, entries_per_split: Mapping[str, Sequence[Mapping[str, Any]]] = ENTRIES) -> Path:
    """Write a CaptionQA dataset folder with ``entries_per_split`` (split -> entries) and return it."""
    from datasets import Dataset

    (folder / "data").mkdir(parents=True, exist_ok=True)
    sizes: dict[str, tuple[int, int]] = {}
    for split, entries in entries_per_split.items():
        columns: dict[str, list[Any]] = {"id": [], "images": [], "questions": [], "domain": [], "image_paths": []}
        for entry in entries:
            paths = [f"images/{split}/{entry['id']}_{k}.png" for k in range(len(entry["images"]))]
            columns["id"].append(entry["id"])
            columns["images"].append(
                [{"bytes": png(name), "path": Path(p).name} for name, p in zip(entry["images"], paths, strict=True)]
            )
            columns["questions"].append(list(entry["questions"]))
            columns["domain"].append(entry.get("domain", split))
            columns["image_paths"].append(paths)
        parquet = folder / "data" / f"{split}-00000-of-00001.parquet"
        dataset = Dataset.from_dict(columns, features=features())
        dataset.to_parquet(str(parquet))
        sizes[split] = (dataset.data.nbytes, len(dataset))
    (folder / "README.md").write_text(readme(sizes), encoding="utf-8")
    return folder
