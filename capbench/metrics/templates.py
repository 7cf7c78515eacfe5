"""Prompt templates: our own wording, in text files whose hashes are recorded with results.

Templates use ``$name`` placeholders (:class:`string.Template`), so braces and dollar signs in
captions pass through untouched. A user can point ``override_dir`` at a folder of files with
the same names (for example, to reproduce a paper with its original prompts).
"""

from __future__ import annotations

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
        """Fill every placeholder; a missing field is a configuration error."""
        try:
            return string.Template(self.text).substitute(fields).strip()
        except KeyError as exc:
            raise ConfigError(
                f"prompt template {self.source} uses ${exc.args[0]}, which this metric does not fill"
            ) from None


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
