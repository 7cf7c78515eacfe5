"""Tolerant parsers of judge replies. A reply that cannot be read yields None, never a guess."""

from __future__ import annotations

import re
from collections.abc import Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_THINK_END = re.compile(r"</think>", re.IGNORECASE)
_BARE = re.compile(r"^[\s\"'*`(\[]*([A-Za-z])[\s\"'*`)\].:,]*$")
_STATED = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is|would be|will be)?\s*[:=]?\s*(?i:option\s*)?[\"'*`(\[]*([A-Z])\b"
)
_LEADING = re.compile(r"^[\s\"'*`]*[(\[]?([A-Z])(?:[).:\]]|\s*$|\s+-)")
_DIGIT = re.compile(r"^\s*\(?([1-9][0-9]?)[).:]?\s*$")


def parse_choice(reply: str, options: Sequence[str]) -> int | None:
    """Return the index of the option a judge chose, or None if the reply does not say.

    Reads, in order: a bare letter ("B", "(b)", "**C**"); a stated answer ("Answer: B",
    "the answer is (C)"); a leading letter ("B. red"); the full text of exactly one option;
    a bare option number ("2"). Anything after a closing ``</think>`` is what counts.
    Letters past the last option are rejected.
    """
    text = _THINK_END.split(reply)[-1].strip()
    if not text:
        return None
    n = len(options)
    for pattern in (_BARE, _STATED, _LEADING):
        match = pattern.search(text) if pattern is _STATED else pattern.match(text)
        if match:
            index = LETTERS.find(match.group(1).upper())
            return index if 0 <= index < n else None
    by_text = _match_option_text(text, options)
    if by_text is not None:
        return by_text
    digit = _DIGIT.match(text)
    if digit and 1 <= int(digit.group(1)) <= n:
        return int(digit.group(1)) - 1
    return None


def _match_option_text(text: str, options: Sequence[str]) -> int | None:
    """Return the option the reply spells out: all of it, or exactly one multi-word option in it.

    A one-word option must be the whole reply: "no idea" does not answer "No".
    """
    folded = _fold(text)
    exact = [i for i, option in enumerate(options) if _fold(option) == folded]
    if exact:
        return exact[0]
    padded = f" {folded} "
    hits = [i for i, option in enumerate(options) if " " in _fold(option) and f" {_fold(option)} " in padded]
    return hits[0] if len(hits) == 1 else None


def _fold(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
