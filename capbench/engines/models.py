"""What identifies a model checkpoint in a fingerprint, and what kind of model it is.

A hub id is identified by itself and its revision. A local folder is identified by content
(:func:`folder_digest`), so a folder retrained in place gets a new fingerprint and stale
cached judgments are not reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from capbench.errors import ConfigError
from capbench.hashing import sha256_file

_WHOLE = 1 << 24  # files up to this size (configs, tokenizers, templates) are hashed whole
_SAMPLE = 1 << 16  # bytes read at each of the sampled offsets of a larger (weight) file


def folder_digest(folder: Path) -> str:
    """Hash a checkpoint folder by content: each file's path and size, and its bytes or samples of them.

    Weight files are not read in full (gigabytes): 16 evenly spaced 64 KiB samples change with
    any reseeded or retrained weights. Hidden folders (``.git``, ``.cache``) are skipped, so a
    copy or a fresh download of the same checkpoint keeps its digest.
    """
    digest = hashlib.sha256()
    files = (p for p in folder.rglob("*") if p.is_file())
    for path in sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as handle:
            if size <= _WHOLE:
                digest.update(handle.read())
                continue
            for k in range(16):
                handle.seek((size - _SAMPLE) * k // 15)
                digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()


# A hub id as huggingface_hub validates it: NAME or ORG/NAME, at most 96 characters.
_HUB_ID = re.compile(r"(?:\w(?:[\w.-]*\w)?/)?\w(?:[\w.-]*\w)?", re.ASCII)
_SEPARATORS = {"/", "\\", os.sep, os.altsep or os.sep}


def is_hub_id(model: str) -> bool:
    """Whether ``model`` has the hub's ``NAME`` or ``ORG/NAME`` form."""
    return (
        len(model) <= 96
        and _HUB_ID.fullmatch(model) is not None
        and ".." not in model
        and "--" not in model
        and not model.endswith(".git")
    )


def looks_like_path(model: str) -> bool:
    """Whether ``model`` can only mean a local path: it starts like one, or has separators but no hub form."""
    if model in (".", "..") or model.startswith(("/", "~", "./", "../", ".\\", "..\\")):
        return True
    return any(sep in model for sep in _SEPARATORS) and not is_hub_id(model)


def local_model_folder(model: str, engine: str = "model", files_ok: tuple[str, ...] = ()) -> Path | None:
    """Return the checkpoint folder ``model`` names, or None for a hub id (or an accepted file).

    Checked before transformers or vLLM sees the name, so a mistyped path is one clear error
    instead of a hub lookup's "Repo id must be in the form ..." traceback.

    Args:
        model: What the user gave: a hub id, a folder, ``~/...``.
        engine: Who asks, for the message (e.g. "hf engine").
        files_ok: File suffixes the engine loads as they are (vLLM's ``.gguf``).

    Raises:
        ConfigError: ``model`` is a file, or reads as a local path that does not exist.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        if path.suffix.lower() in files_ok:
            return None
        raise ConfigError(
            f"{engine}: {model} is a file, not a model folder; give the checkpoint folder that holds its "
            "config.json and weights, or a hub id (ORG/NAME)"
        )
    if looks_like_path(model):
        where = "" if path.is_absolute() else f" (looked in {path.resolve()})"
        raise ConfigError(
            f"{engine}: model folder {model} not found{where}; check the path, or give a hub id as ORG/NAME"
        )
    return None


def model_identity(model: str, revision: str | None = None) -> dict[str, Any]:
    """Return ``{"name", "source"}``: a short name, and the hub id@revision or the folder's content digest."""
    path = local_model_folder(model, "vllm engine", files_ok=(".gguf",))
    if path is None:
        return {"name": model, "source": f"{model}@{revision or 'main'}"}
    return {"name": path.resolve().name, "source": f"folder:{folder_digest(path)}"}


def is_vision_model(model: str, revision: str | None = None) -> bool:
    """Whether the checkpoint has a vision tower (its config has a ``vision_config``)."""
    folder = local_model_folder(model, "vllm engine", files_ok=(".gguf",))
    config = Path(model).expanduser() / "config.json"
    if folder is not None and config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
    else:
        from transformers import AutoConfig

        data = AutoConfig.from_pretrained(model, revision=revision).to_dict()
    return "vision_config" in data


def bundled_checkpoint(name: str = "smollm2", root: Path | None = None) -> Path:
    """A bundled GGUF model (the embedded judge's) as a transformers folder, converted once and kept.

    The folder lives under ``root`` (default ``$CAPBENCH_MODELS``, else ``~/.cache/capbench/models``),
    named by the GGUF's hash, so later calls skip the conversion.
    """
    import os

    from capbench.engines.llamacpp import resolve_model

    gguf = resolve_model(name)
    root = root or Path(os.environ.get("CAPBENCH_MODELS", Path.home() / ".cache" / "capbench" / "models"))
    return convert_gguf(gguf, root / f"{gguf.stem.lower()}-{sha256_file(str(gguf))[:12]}")


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Write a transformers checkpoint folder (bfloat16 safetensors + tokenizer) from a GGUF file.

    vLLM and the hf engine load folders; this turns a GGUF model, such as the embedded judge's
    SmolLM2-135M-Instruct, into one. Needs ``transformers``, ``gguf`` and ``torch``. The folder is
    written beside and renamed into place, so a killed conversion leaves nothing half-written.
    """
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
        # The weights are dequantized on load; drop the GGUF marker so the folder saves as plain weights.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
