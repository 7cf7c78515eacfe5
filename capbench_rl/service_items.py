"""Items for capbench's reward service, from what a trainer holds: captions, images, references.

The service's contract (docs/rl.md, "Rewards from a service") takes an item as ``{"id", "caption",
"image", "reference_caption", "reference_facts", "questions", "domain"}`` or, for a sample of the
service's own benchmark, ``{"id", "caption", "sample_id"}``. An image is ``{"path"}`` (the service
reads the file: a shared file system), ``{"url"}``, or ``{"base64", "format"}`` inline.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from capbench.errors import ConfigError
from capbench_rl import rewards as R

ImageMode = Literal["path", "base64"]
"""How a rollout's image reaches the service: its path (a shared file system) or inline base64."""


def image_item(source: Any, mode: ImageMode = "path") -> dict[str, str] | None:
    """An image as the service takes it: ``{"path"}``, ``{"url"}`` or ``{"base64", "format"}``.

    ``source`` is a path, an http(s) URL, a contract dict, a datasets image (``{"bytes", "path"}``),
    raw bytes or a PIL image. With ``mode="path"`` a local file goes as its absolute path (the
    service must see the same file system); with ``"base64"`` it goes inline. An image held in
    memory always goes inline. None gives None.
    """
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith(("http://", "https://")):
            return {"url": text}
        path = Path(text).expanduser().resolve()
        return {"path": str(path)} if mode == "path" else _inline(_read(path))
    if isinstance(source, Mapping):
        if "url" in source or "base64" in source:
            return {k: str(v) for k, v in source.items() if v is not None}
        if source.get("bytes"):
            return _inline(bytes(source["bytes"]))
        if source.get("path"):
            return image_item(source["path"], mode)
    if isinstance(source, (bytes, bytearray)):
        return _inline(bytes(source))
    if hasattr(source, "save"):  # a PIL image
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        return _inline(buffer.getvalue())
    raise ConfigError(f"cannot send an image given as {type(source).__name__}; give a path, URL, bytes or PIL image")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"image {path}: cannot be read ({exc.strerror}); check the dataset's image paths") from None


def _inline(data: bytes) -> dict[str, str]:
    """Bytes as inline base64; an image that is neither PNG nor JPEG is converted to PNG."""
    if data.startswith(b"\x89PNG"):
        kind = "png"
    elif data.startswith(b"\xff\xd8"):
        kind = "jpeg"
    else:
        from PIL import Image

        buffer = io.BytesIO()
        with Image.open(io.BytesIO(data)) as image:
            image.save(buffer, format="PNG")
        data, kind = buffer.getvalue(), "png"
    return {"base64": base64.b64encode(data).decode("ascii"), "format": kind}


def plain(value: Any) -> Any:
    """A JSON-ready copy of a value a trainer holds as numpy arrays, OmegaConf or datasets containers."""
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # a numpy array or scalar
        return plain(value.tolist())
    if isinstance(value, Sequence) or hasattr(value, "__iter__"):
        return [plain(v) for v in value]
    return value


def reference_fields(
    reference_caption: Any = None,
    reference_facts: Any = None,
    questions: Any = None,
    domain: Any = None,
) -> dict[str, Any]:
    """The reference part of an item, leaving out what is not given (a question's null fields too)."""
    item: dict[str, Any] = {}
    if reference_caption is not None:
        item["reference_caption"] = str(reference_caption)
    if reference_facts is not None:
        item["reference_facts"] = [str(f) for f in plain(reference_facts)]
    if questions is not None:
        item["questions"] = [{k: v for k, v in plain(q).items() if v is not None} for q in plain(questions)]
    if domain is not None:
        item["domain"] = str(domain)
    return item


def rollout_item(index: int, caption: str, columns: Mapping[str, Any], images: ImageMode = "path") -> dict[str, Any]:
    """One rollout as an item, from TRL's columns (each a list over the batch).

    With a ``reference_caption`` column the references travel with the item, whose id is the
    rollout's ``sample_id`` (as in-process rewards name their samples). Without one, the
    ``sample_id`` is sent for the service to take the references from its own benchmark.
    """

    def at(key: str) -> Any:
        column = columns.get(key)
        return None if column is None else column[index]

    sample = at("sample_id")
    item: dict[str, Any] = {"id": str(sample) if sample is not None else f"rollout-{index}", "caption": caption}
    if columns.get("reference_caption") is not None:
        item.update(reference_fields(at("reference_caption"), at("reference_facts"), at("questions"), at("domain")))
    elif sample is not None:
        item["sample_id"] = str(sample)
    source = at("image_path")
    if source is None:
        source = at("image")
    if source is None and columns.get("images") is not None:
        source = (list(at("images") or []) or [None])[0]
    image = image_item(source, images)
    if image is not None:
        item["image"] = image
    return item


def masked_rollouts(
    captions: Sequence[str],
    references: Sequence[str] | None,
    band: tuple[float, float] | None,
    unit: R.Unit = "words",
    tokenizer: str | None = None,
) -> list[bool]:
    """Which rollouts lie outside the length band: their reward is 0, and they are not sent to be rated."""
    if band is None:
        return [False] * len(captions)
    if references is None:
        raise ConfigError("the length band needs each rollout's reference caption: give the data a reference_caption")
    counter = R._tokenizer(unit, tokenizer)
    return [not R.in_band(R.length_ratio(c, r, unit, counter), band) for c, r in zip(captions, references, strict=True)]
