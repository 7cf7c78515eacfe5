"""Tolerant parsers of judge replies. A reply that cannot be read yields None, never a guess."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from typing import Any

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


_STANDALONE_LETTER = re.compile(r"\b([A-Z])\b")
_STANDALONE_NUMBER = re.compile(r"\b([1-9][0-9]?)\b")


def parse_choice_official(reply: str, n_options: int) -> int | None:
    """Return the option index that CaptionQA's official scorer reads from a reply, or None.

    Its rule, quirks included (for the official aggregation only; :func:`parse_choice` is ours):
    the reply is stripped, as its vLLM wrapper returns it; only what follows the first
    ``</think>``, then the first ``Answer: `` (with the space), then the first newline is read;
    the first single letter standing alone, in either case ("a" is option A), answers if it
    names an option, and no later letter is tried; otherwise the first standalone number 1-99
    that numbers an option.
    """
    text = reply.strip()
    if not text:
        return None
    for marker in ("</think>", "Answer: ", "\n"):
        _, found, after = text.partition(marker)
        if found:
            text = after
    limit = max(1, n_options)
    letter = _STANDALONE_LETTER.search(text.upper())
    if letter and LETTERS.find(letter.group(1)) < limit:
        return LETTERS.find(letter.group(1))
    number = _STANDALONE_NUMBER.search(text)
    if number and 1 <= int(number.group(1)) <= limit:
        return int(number.group(1)) - 1
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


_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_PY_LITERALS = re.compile(r"\b(?:null|true|false)\b")
_PY_NAMES = {"null": "None", "true": "True", "false": "False"}


def parse_json(reply: str, truncated: bool = False) -> Any:
    """Return the JSON value a judge reply holds, or None if it holds none.

    Tolerates what judges write around JSON: code fences, prose before and after, a reasoning
    block, trailing commas, single quotes and Python literals (True, None). With ``truncated``
    (the reply hit its token limit), a cut-off value is closed after its last complete element.
    Where a reply holds several values (a judge quoting JSON from the caption it judges, then
    answering), the last object is its answer, as with text after ``</think>``.
    """
    text = _THINK_END.split(reply)[-1].strip()
    if truncated:
        start = min((i for i in (text.find("{"), text.find("[")) if i != -1), default=-1)
        closed = _close_truncated(text[start:]) if start != -1 else None
        value = _loads_lenient(closed) if closed else None
        if value is not None:
            return value
    value = _loads_lenient(text)  # the common case, a reply that is one value, without a scan
    if value is not None:
        return value
    # A value in a code fence is a balanced span like any other: no fence is trusted first, since a
    # judge may quote a fenced value from the caption before its own answer. Of the outermost
    # values the last object wins (every protocol here asks for an object; a list after it is
    # more likely a note like "[1]"), else the last list; then values nested in others.
    outer = _outer_spans(text)
    listed = None
    for start, end in reversed(outer):
        value = _loads_lenient(text[start:end])
        if isinstance(value, dict):
            return value
        if listed is None:
            listed = value
    if listed is not None:
        return listed
    for start, end in _nested_spans(text, outer):
        value = _loads_lenient(text[start:end])
        if value is not None:
            return value
    return None


def _close_truncated(text: str) -> str | None:
    """Cut ``text`` after its last complete element and close the brackets still open."""
    stack: list[str] = []
    quote, escaped = False, False
    cut: tuple[int, list[str]] | None = None
    for index, char in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quote = False
            continue
        if char == '"':
            quote = True
        elif char in "[{":
            stack.append("]" if char == "[" else "}")
        elif char in "]}":
            if not stack:
                return None
            stack.pop()
            if stack and stack[-1] == "]":
                cut = (index + 1, list(stack))  # an element of an open list just ended
    if cut is None:
        return None
    end, still_open = cut
    return text[:end] + "".join(reversed(still_open))


def _outer_spans(text: str) -> list[tuple[int, int]]:
    """Return the balanced {...} or [...] spans that no earlier span holds, in one pass."""
    outer: list[tuple[int, int]] = []
    position = 0
    while (start := _next_opener(text, position)) != -1:
        end = _balanced_end(text, start, text[start], _CLOSERS[text[start]])
        if end == -1:
            position = start + 1
        else:
            outer.append((start, end + 1))
            position = end + 1
    return outer


def _nested_spans(text: str, outer: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return the other balanced spans (mostly those inside an outer one), longest first."""
    spans: set[tuple[int, int]] = set()
    for opener, closer in _CLOSERS.items():
        start = text.find(opener)
        while start != -1:
            end = _balanced_end(text, start, opener, closer)
            if end != -1:
                spans.add((start, end + 1))
            start = text.find(opener, start + 1)
    return sorted(spans - set(outer), key=lambda s: s[1] - s[0], reverse=True)


_CLOSERS = {"{": "}", "[": "]"}


def _next_opener(text: str, position: int) -> int:
    found = [i for i in (text.find("{", position), text.find("[", position)) if i != -1]
    return min(found, default=-1)


_SPECIAL = re.compile(r"[\\\"'\[\]{}]")  # what can change quoting or depth; other text is skipped


def _balanced_end(text: str, start: int, opener: str, closer: str) -> int:
    """Return the index of the bracket that closes the one at ``start`` (quotes respected), or -1."""
    depth, quote, escaped = 0, "", -1  # escaped: the index of the character a backslash escapes
    for match in _SPECIAL.finditer(text, start):
        char = match.group()
        if match.start() == escaped:
            continue
        if quote:
            if char == "\\":
                escaped = match.start() + 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == opener:
            depth += 1
        elif char == closer:
            depth -= 1
            if depth == 0:
                return match.start()
    return -1


def _loads_lenient(chunk: str) -> Any:
    if not chunk or chunk[0] not in "[{":
        return None
    cleaned = _TRAILING_COMMA.sub(r"\1", chunk)
    try:
        return json.loads(cleaned)
    except json.JSONDecodeError:
        pass
    try:
        value = ast.literal_eval(_PY_LITERALS.sub(lambda m: _PY_NAMES[m.group(0)], cleaned))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: {{}}, a set of dicts
        return None
    return value if isinstance(value, (list, dict)) else None
