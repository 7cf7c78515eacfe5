"""Tiny random checkpoints built from configs, for engine tests that cannot reach the hub.

:func:`build_tiny_qwen25vl` writes a Qwen2.5-VL folder laid out like the real one (config,
safetensors weights, generation config, tokenizer, image processor config, processor config and
chat template); :func:`build_tiny_llama` a text-only Llama folder. Both use a byte-level BPE
tokenizer trained here, in a few milliseconds, on sentences made from word lists, with Qwen's
special tokens, and a ChatML chat template of our own. The weights are random
(``torch.manual_seed(seed)``), so the models babble and rarely stop: give them small
``max_tokens``.

Loading the Qwen2.5-VL processor needs care without torchvision: transformers' Qwen2.5-VL
processor takes a video processor, and every video processor needs torchvision, so
``AutoProcessor.from_pretrained`` raises there, for this folder as for the real checkpoints.
:func:`capbench.engines.hf_checkpoint.load_processor` then builds an image-only processor of the same
class, with the PIL image processor (``Qwen2VLImageProcessorPil``); the folder itself stays a
standard checkpoint, which ``AutoProcessor`` loads wherever torchvision is installed.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any, Literal

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: ChatML turns; an image part renders as Qwen's vision placeholder, which the processor expands.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

#: Weight scale of the tiny models. At the usual 0.02 the random layers add next to nothing to the
#: tied embeddings, so the model echoes the prompt's last token (a newline) forever, the same for every
#: image, and decodes to ''. At 0.2 the outputs differ from image to image.
INIT_RANGE = 0.2

_SUBJECTS = ("a cat", "the dog", "an astronaut", "a red car", "two birds", "the old man", "a small boat", "a mug")
_VERBS = ("sits on", "stands near", "looks at", "floats above", "rests beside", "waits under", "moves toward")
_PLACES = ("the table", "a wooden bench", "the blue sky", "a busy street", "the calm lake", "a white wall", "the grass")
_EXTRAS = ("in the morning.", "at night.", "under bright light.", "in the rain.", "with a shadow.", "near a window.")

#: Qwen2.5-VL-3B-Instruct's shape, from its published config.json.
_QWEN25VL_3B_TEXT = {
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "rms_norm_eps": 1e-6,
    "sliding_window": 32768,
    "use_sliding_window": False,
    "vocab_size": 151936,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
_QWEN25VL_3B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 2048,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}
_TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    "initializer_range": INIT_RANGE,
}
_TINY_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
    "hidden_act": "silu",
    "initializer_range": INIT_RANGE,
}


def corpus(count: int = 400, seed: int = 0) -> list[str]:
    """Return ``count`` simple English sentences made from word lists (deterministic)."""
    rng = random.Random(seed)
    combos = list(itertools.product(_SUBJECTS, _VERBS, _PLACES, _EXTRAS))
    rng.shuffle(combos)
    return [f"{s.capitalize()} {v} {p} {e}" for s, v, p, e in combos[:count]]


def train_tokenizer(vocab_size: int = 512) -> Any:
    """Train a byte-level BPE tokenizer on :func:`corpus`, with Qwen's special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    return tokenizer


def _save_tokenizer(folder: Path, tokenizer_class: Any) -> Any:
    """Wrap a freshly trained tokenizer in ``tokenizer_class`` and save it with the chat template."""
    tokenizer = tokenizer_class(
        tokenizer_object=train_tokenizer(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def _write_generation_config(folder: Path, tokenizer: Any) -> None:
    """Write a generation config with odd sampling defaults, as Qwen's is; engines must ignore them."""
    from transformers import GenerationConfig

    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    GenerationConfig(
        bos_token_id=endoftext,
        pad_token_id=endoftext,
        eos_token_id=[im_end, endoftext],
        do_sample=True,
        top_k=1,
        top_p=0.001,
        temperature=0.1,
        repetition_penalty=1.05,
    ).save_pretrained(folder)


def qwen25vl_config(tokenizer: Any, size: Literal["tiny", "3b"] = "tiny") -> Any:
    """Return a Qwen2.5-VL config of the given size whose special token ids are ``tokenizer``'s."""
    from transformers import Qwen2_5_VLConfig

    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)), strict=True))
    text = dict(_TINY_TEXT if size == "tiny" else _QWEN25VL_3B_TEXT)
    text.setdefault("vocab_size", len(tokenizer))
    return Qwen2_5_VLConfig(
        text_config={**text, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]},
        vision_config=_TINY_VISION if size == "tiny" else _QWEN25VL_3B_VISION,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        initializer_range=INIT_RANGE if size == "tiny" else 0.02,
    )


def build_tiny_qwen25vl(folder: Path, size: Literal["tiny", "3b"] = "tiny", seed: int = 0) -> Path:
    """Write a random Qwen2.5-VL checkpoint to ``folder`` and return it.

    Args:
        folder: Where to write (created if missing).
        size: "tiny" (hidden 64, 2 layers, a 2-block vision tower; float32, a few MB) or "3b"
            (Qwen2.5-VL-3B-Instruct's real shape, bfloat16, about 7.5 GB: build it on a GPU).
        seed: Seed of the random weights.

    Returns:
        ``folder``.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _save_tokenizer(folder, Qwen2TokenizerFast)
    config = qwen25vl_config(tokenizer, size)
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    device = "cuda" if size == "3b" and torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    _write_generation_config(folder, tokenizer)
    # Few patches per image in the tiny model (at most 8x8, i.e. 16 image tokens); real limits in the 3B.
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112} if size == "tiny" else {"max_pixels": 12845056}
    Qwen2VLImageProcessorPil(**pixels).save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2_5_VLProcessor"}, indent=2))
    return folder


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random text-only Llama checkpoint (float32) to ``folder`` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _save_tokenizer(folder, PreTrainedTokenizerFast)
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
        tie_word_embeddings=True,
        initializer_range=INIT_RANGE,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    _write_generation_config(folder, tokenizer)
    return folder
