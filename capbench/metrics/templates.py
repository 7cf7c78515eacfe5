"""Prompt templates: our own wording, in text files whose hashes are recorded with results.

Templates use ``$name`` placeholders (:class:`string.Template`), so braces and dollar signs in
captions pass through untouched. Templates fence untrusted text between tags (``<description>``
… ``</description>``); the template's own tags are removed from every filled-in value, so a
caption cannot close its fence and write instructions after it. Strings shaped like chat-template
control tokens (``<|im_end|>``, ``</s>``, ``[INST]``, ``<end_of_turn>``) get a space after their
first character, so a tokenizer cannot read them as a real end of turn; other text is left as it is.
A user can point ``override_dir`` at a folder of files with the same names (for example, to
reproduce a paper with its original prompts).
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


@lru_cache(maxsize=64)
def load_template(name: str, override_dir: str | None = None) -> PromptTemplate:
    """Return the template ``name`` (e.g. 'captionqa.user'), from ``override_dir`` if it has one."""
    filename = f"{name}.txt"
    if override_dir is not None:
        path = Path(override_dir) / filename
        if path.is_file():
            return PromptTemplate(name, path.read_text(encoding="utf-8"), str(path))
    bundled = resources.files("capbench.metrics").joinpath("prompts", filename)
    if not bundled.is_file():
        raise ConfigError(f"no prompt template named {name!r}")
    return PromptTemplate(name, bundled.read_text(encoding="utf-8"), f"capbench/metrics/prompts/{filename}")
