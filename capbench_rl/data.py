"""Training data: (image, reference caption) pairs as TRL's conversational prompts.

From a capbench benchmark (capbench-mini works as a toy training set; the recipe's ``images_dir``,
``benchmark_file``, ``dataset`` and ``split`` reach its loader as ``capbench eval``'s options of
those names do), or from a JSONL file of
``{"image": path, "caption": reference}`` lines (ShareGPT4V-style captions flattened to that;
optional ``id``, ``facts``, ``questions`` and ``domain``), read by capbench's ``jsonl`` benchmark,
so ``capbench eval -b jsonl --data-file`` scores the very samples trained on. Each row holds
the prompt (a user turn with the image and the instruction), the image, and the columns the
rewards read: ``sample_id``, ``reference_caption``, ``reference_facts``, ``questions`` and
``domain``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capbench.data import load_benchmark
from capbench.errors import ConfigError, InputError, MissingDependencyError
from capbench.records import Sample
from capbench_rl.recipe import Recipe, qa_rewards

#: `capbench eval` options a benchmark loader's errors name -> the recipe field that sets each.
_FIELD_OF_FLAG = {
    "--images-dir": "images_dir",
    "--data-file": "benchmark_file",
    "--dataset": "dataset",
    "--split": "split",
}


def rows(recipe: Recipe) -> list[dict[str, Any]]:
    """Return the training rows the recipe names: image path, reference caption, facts and questions.

    Raises:
        InputError: a JSONL line without an image or caption, or an image that is not there.
        ConfigError: a question-answering reward over data that holds no questions.
    """
    out = _benchmark_rows(recipe) if recipe.benchmark is not None else _file_rows(Path(str(recipe.data_file)))
    if not out:
        raise InputError("the recipe's data holds no (image, reference caption) pair")
    out = out[: recipe.limit] if recipe.limit else out
    asking = [name for name in recipe.rewards if name in qa_rewards()]
    bare = [row["sample_id"] for row in out if not row["questions"]]
    if asking and bare:
        shown = ", ".join(bare[:5]) + (" …" if len(bare) > 5 else "")
        raise ConfigError(
            f"reward {asking[0]} asks questions about each image, but {len(bare)} training sample(s) have none "
            f"({shown}); give each JSONL line 'questions', or drop the reward"
        )
    return out


def _benchmark_rows(recipe: Recipe) -> list[dict[str, Any]]:
    assert recipe.benchmark is not None
    try:
        bench = load_benchmark(
            recipe.benchmark,
            with_images=True,
            images_dir=recipe.images_dir,
            data_file=recipe.benchmark_file,
            dataset=recipe.dataset,
            split=recipe.split,
        )
    except MissingDependencyError:
        raise
    except (ConfigError, InputError) as exc:
        raise type(exc)(recipe_words(str(exc))) from None
    return [_row(s) for s in bench.samples if s.image is not None and s.reference_caption.strip()]


def _row(sample: Sample) -> dict[str, Any]:
    """The columns the rewards read, from one sample whose image was loaded."""
    assert sample.image is not None
    return {
        "sample_id": sample.id,
        "image_path": sample.image.path,
        "reference_caption": sample.reference_caption,
        "reference_facts": list(sample.reference_facts),
        "questions": [q.to_dict() for q in sample.questions],
        "domain": sample.domain,
    }


def recipe_words(message: str) -> str:
    """A loader's message with each `capbench eval` option it names replaced by the recipe field that sets it."""
    for flag, name in _FIELD_OF_FLAG.items():
        message = message.replace(flag, f"recipe field {name}")
    return message


def _file_rows(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL training file with capbench's ``jsonl`` benchmark, the reader `capbench eval` uses."""
    bench = load_benchmark("jsonl", with_images=True, data_file=path)
    return [_row(s) for s in bench.samples]


def dataset(recipe: Recipe) -> Any:
    """Build the ``datasets.Dataset`` GRPOTrainer trains on."""
    from datasets import Dataset
    from PIL import Image

    records = []
    for row in rows(recipe):
        with Image.open(row["image_path"]) as opened:
            image = opened.convert("RGB")
        if recipe.image_size:
            image.thumbnail((recipe.image_size, recipe.image_size))
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": recipe.prompt}]}]
        records.append({"prompt": prompt, "image": image, **row})
    return Dataset.from_list(records)
