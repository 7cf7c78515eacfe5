"""Loading and identifying transformers checkpoints, for the hf engine.

:func:`load_processor` loads a
vision-language processor even where torchvision is missing; :func:`limit_pixels` caps the
image size of Qwen-VL style processors.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

from capbench.errors import ConfigError


def load_processor(model: str, **kwargs: Any) -> Any:
    """Load a model's processor, building it without a video processor when torchvision is missing."""
    from transformers import AutoConfig, AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model, **kwargs)
    except (ImportError, AttributeError, TypeError, ValueError, OSError) as exc:  # OSError: no video processor file
        if importlib.util.find_spec("torchvision") is not None:
            raise
        error = exc
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES, processor_class_from_name

    config_kwargs = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
    model_type = AutoConfig.from_pretrained(model, **config_kwargs).model_type
    base = processor_class_from_name(PROCESSOR_MAPPING_NAMES.get(model_type) or "")
    if base is None or "video_processor" not in base.__init__.__code__.co_varnames:
        raise error

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any):
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kw)

    # The processor's sub-processors are the parameters of its __init__, so this one has no video processor.
    image_only = type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__})
    return image_only.from_pretrained(model, **kwargs)


def limit_pixels(image_processor: Any, max_pixels: int) -> None:
    """Cap the pixels per image of a Qwen-VL style image processor, whose size bounds the pixel count."""
    size = getattr(image_processor, "size", None)
    if not hasattr(image_processor, "merge_size") or getattr(size, "longest_edge", None) is None:
        raise ConfigError(
            f"hf engine: max_pixels works with Qwen-VL style image processors, not {type(image_processor).__name__}"
        )
    smallest = min(size.shortest_edge or max_pixels, max_pixels)
    image_processor.size = dataclasses.replace(size, longest_edge=max_pixels, shortest_edge=smallest)
