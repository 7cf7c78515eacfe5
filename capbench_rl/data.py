"""Training data: (image, reference caption) pairs as TRL's conversational prompts.

From a capbench benchmark (capbench-mini works as a toy training set), or from a JSONL file of
``{"image": path, "caption": reference}`` lines (ShareGPT4V-style captions flattened to that).
Each row holds the prompt (a user turn with the image and the instruction), the image, and the
columns the rewards read: ``reference_caption`` and ``reference_facts``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capbench.data import load_benchmark
from capbench.errors import InputError
from capbench.records import read_jsonl
from capbench_rl.recipe import Recipe


def rows(recipe: Recipe) -> list[dict[str, Any]]:
    """Return the training rows the recipe names: image path, reference caption and facts."""
    if recipe.benchmark is not None:
        bench = load_benchmark(recipe.benchmark, with_images=True)
        out = [
            {
                "image_path": s.image.path,
                "reference_caption": s.reference_caption,
                "reference_facts": list(s.reference_facts),
            }
            for s in bench.samples
            if s.image is not None and s.reference_caption.strip()
        ]
    else:
        path = Path(str(recipe.data_file))
        out = []
        for number, obj in read_jsonl(path):
            image, caption = obj.get("image"), obj.get("caption")
            if not isinstance(image, str) or not isinstance(caption, str) or not caption.strip():
                raise InputError(f"{path}:{number}: needs 'image' (a path) and a non-empty 'caption'")
            image_path = (path.parent / image) if not Path(image).is_absolute() else Path(image)
            if not image_path.is_file():
                raise InputError(f"{path}:{number}: image {image_path} not found; fix the path (relative to the file)")
            out.append(
                {"image_path": str(image_path), "reference_caption": caption, "reference_facts": obj.get("facts") or []}
            )
    if not out:
        raise InputError("the recipe's data holds no (image, reference caption) pair")
    return out[: recipe.limit] if recipe.limit else out


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
