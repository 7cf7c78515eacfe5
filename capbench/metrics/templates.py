"""Prompt templates: our own wording, in text files whose hashes are recorded with results.

Templates use ``$name`` placeholders (:class:`string.Template`), so braces and dollar signs in
captions pass through untouched. Templates fence untrusted text between tags (``<description>``
… ``</description>``); the template's own tags are removed from every filled-in value, so a
caption cannot close its fence and write instructions after it. Strings shaped like chat-template
control tokens (``<|im_end|>``, ``</s>``, ``[INST]``, ``<end_of_turn>``) get a space after their
first character, so a tokenizer cannot read them as a real end of turn; other text is left as it is.
A user can point ``override_dir`` at a folder of files with the same names (for example, to
reproduce a paper with its original prompts); each must use the placeholders capbench's own
template uses, and every file in the folder must replace a template, so a typo is an error.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from capbench.errors import ConfigError
from capbench.hashing import sha256_text


@dataclass(frozen=True)
class PromptTemplate:
    """A named template and the hash of its text."""

    name: str
    text: str
    source: str

    @property
    def sha256(self) -> str:
        """Hash of the template text."""
        return sha256_text(self.text)

    def render(self, **fields: str) -> str:
        """Fill every placeholder with its value made inert (no fence tags, no control tokens).

        A missing field is a configuration error.
        """
        fences = _fence_tags(self.text)
        fields = {name: _inert(value, fences) for name, value in fields.items()}
        try:
            return string.Template(self.text).substitute(fields).strip()
        except KeyError as exc:
            raise ConfigError(
                f"prompt template {self.source} uses ${exc.args[0]}, which this metric does not fill"
            ) from None


_CLOSING_TAG = re.compile(r"</\s*([A-Za-z][\w.-]*)\s*>")
# The shapes of chat-template control tokens: ChatML, Llama 3, Qwen and Phi (<|...|>), Llama 2 and
# Mistral (<s>, </s>, [INST]), Gemma (<start_of_turn>, <end_of_turn>, <bos>, <eos>).
_CONTROL_TOKEN = re.compile(
    r"<\|[^<>|\s]{1,64}\|>|<\uff5c[^<>\s]{1,64}\uff5c>|</?s>|\[/?(?:INST|SYS)\]|<</?SYS>>"
    r"|<(?:start|end)_of_turn>|<(?:bos|eos|pad|unk)>"
)


def _inert(value: str, fences: re.Pattern[str] | None) -> str:
    """Return a filled-in value without the template's fence tags, its control tokens broken up."""
    if fences is not None:
        value = fences.sub(" ", value)
    return _CONTROL_TOKEN.sub(lambda m: f"{m.group(0)[0]} {m.group(0)[1:]}", value)


@lru_cache(maxsize=64)
def _fence_tags(text: str) -> re.Pattern[str] | None:
    """Return a pattern of the fence tags a template closes (opening or closing, any case), or None."""
    names = sorted({m.group(1) for m in _CLOSING_TAG.finditer(text)})
    if not names:
        return None
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(rf"<\s*/?\s*(?:{alternatives})(?![\w.-])[^<>]*>", re.IGNORECASE)


#: Placeholders an override may use in place of a built-in one: the same content in the shape
#: DeCapBench's official prompts want (a JSON listing), which the fact pipeline also fills in.
_ALTERNATIVES: dict[str, dict[str, tuple[str, ...]]] = {
    "facts.match.user": {"facts": ("facts_json",), "reference_facts": ("reference_facts_json",)},
    "facts.verify.user": {"statements": ("facts_json",)},
}


@lru_cache(maxsize=64)
def load_template(name: str, override_dir: str | None = None) -> PromptTemplate:
    """Return the template ``name`` (e.g. 'captionqa.user'), from ``override_dir`` if it has one.

    Raises:
        ConfigError: no template has that name; the override folder is missing or holds a file
            that replaces no template; or an override lacks a placeholder the built-in template
            fills (the judge would never see, say, the caption) or uses one that is never filled.
    """
    filename = f"{name}.txt"
    bundled = resources.files("capbench.metrics").joinpath("prompts", filename)
    if not bundled.is_file():
        raise ConfigError(f"no prompt template named {name!r}")
    builtin = PromptTemplate(name, bundled.read_text(encoding="utf-8"), f"capbench/metrics/prompts/{filename}")
    if override_dir is None:
        return builtin
    check_prompt_dir(override_dir)
    path = Path(override_dir) / filename
    if not path.is_file():
        return builtin
    try:
        override = PromptTemplate(name, path.read_text(encoding="utf-8-sig"), str(path))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the template as UTF-8") from None
    _check_placeholders(override, builtin)
    return override


def template_names() -> list[str]:
    """Return the names of capbench's own prompt templates."""
    folder = resources.files("capbench.metrics").joinpath("prompts")
    return sorted(f.name[: -len(".txt")] for f in folder.iterdir() if f.name.endswith(".txt"))


@lru_cache(maxsize=16)
def check_prompt_dir(override_dir: str) -> None:
    """Refuse a prompt folder that does not exist or holds a file that replaces no template.

    Hidden files and README files are let be; any other file must be named ``<template>.txt``.
    """
    folder = Path(override_dir)
    if not folder.is_dir():
        raise ConfigError(f"prompt folder {folder} not found; --prompt-dir must name a folder of templates")
    names = template_names()
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.upper().startswith("README") or not path.is_file():
            continue
        if not path.name.endswith(".txt") or path.name[: -len(".txt")] not in names:
            raise ConfigError(
                f"{path}: replaces no prompt template; name it <template>.txt after one of: {', '.join(names)}"
            )


def _check_placeholders(override: PromptTemplate, builtin: PromptTemplate) -> None:
    """Refuse an override that drops a placeholder of the built-in template or adds one never filled."""
    if any(m.group("invalid") is not None for m in string.Template.pattern.finditer(override.text)):
        raise ConfigError(
            f"{override.source}: a '$' starts no placeholder ($name or ${{name}}); write $$ for a dollar sign"
        )
    used = set(_placeholders(override.text))
    wanted = _placeholders(builtin.text)
    alternatives = _ALTERNATIVES.get(override.name, {})
    missing = [f"${p}" for p in wanted if p not in used and not used & set(alternatives.get(p, ()))]
    filled = {*wanted, *(a for group in alternatives.values() for a in group)}
    extra = sorted(f"${p}" for p in used - filled)
    shown = ", ".join(f"${p}" for p in wanted) or "none"
    if missing:
        raise ConfigError(
            f"{override.source}: lacks {', '.join(missing)}, so the judge would never see that text; "
            f"the {override.name} template must use every placeholder capbench's own uses ({shown})"
        )
    if extra:
        raise ConfigError(
            f"{override.source}: uses {', '.join(extra)}, which capbench does not fill in for the {override.name} "
            f"template; its placeholders: {shown}"
        )


def _placeholders(text: str) -> list[str]:
    """Return the placeholder names of a template, in order of first use (``Template.get_identifiers``, 3.10 too)."""
    names = (m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text))
    return list(dict.fromkeys(n for n in names if n))
