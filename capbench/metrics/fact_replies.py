"""Reading the fact judge's replies: facts, verdicts, matches, flags and ratings, tolerantly.

A reply that cannot be read gives None (the caller keeps its raw text as a failure); a reading
that needed a guess (entries taken in order, a missing flag, a reference that does not exist)
is returned together with what was guessed, so the caller records it as a failure although
the reading is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_TRUE = {True, "1", "true", "yes", "correct", "True", "Yes"}
_FALSE = {False, "0", "false", "no", "incorrect", "False", "No"}


@dataclass(frozen=True)
class Fact:
    """One atomic fact of a caption."""

    text: str
    object: str = ""
    descriptive: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"fact": self.text, "object": self.object, "descriptive": self.descriptive}


@dataclass(frozen=True)
class Verdicts:
    """One verification sample: per fact, correct and pointable."""

    correct: tuple[bool, ...]
    pointable: tuple[bool, ...]


def _read_facts(value: Any) -> tuple[tuple[Fact, ...], int]:
    """Read facts from a parsed reply: {"facts": [...]} or a bare list; items dicts or strings.

    Returns the facts and how many of them carry no readable descriptive flag (read as descriptive).
    """
    items = value.get("facts") if isinstance(value, dict) else value
    if not isinstance(items, list):
        return (), 0
    facts: list[Fact] = []
    seen: set[str] = set()
    unflagged = 0
    for item in items:
        fact = _read_fact(item)
        # A fact stated twice is one fact: small judges loop, and a repeat would count twice.
        if fact is not None and fact.text.casefold() not in seen:
            seen.add(fact.text.casefold())
            facts.append(fact)
            unflagged += _descriptive_flag(item) is None
    return tuple(facts), unflagged


def _descriptive_flag(item: Any) -> bool | None:
    """The descriptive flag an item states (ours "descriptive", DeCapBench's "relevance"), or None."""
    if not isinstance(item, dict):
        return None
    return _flag(item["descriptive"] if "descriptive" in item else item.get("relevance"))


def _read_fact(item: Any) -> Fact | None:
    if isinstance(item, str):
        return Fact(item.strip()) if item.strip() else None
    if not isinstance(item, dict):
        return None
    text = item.get("fact") or item.get("text") or item.get("statement")
    if not isinstance(text, str) or not text.strip():
        return None
    descriptive = _descriptive_flag(item) is not False  # no readable flag: descriptive, and counted
    return Fact(text.strip(), str(item.get("object") or item.get("identifier") or ""), descriptive)


def _fold(text: Any) -> str | None:
    return " ".join(text.casefold().split()) if isinstance(text, str) else None


def _entries(value: Any, key: str, facts: Sequence[str]) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """Return the reply's per-fact entries in fact order (None unless every fact has one), and any guess.

    Entries are placed by their "id" (1..n); failing that, by the fact text they echo
    (DeCapBench's replies name facts by text); failing that, a reply with exactly one entry
    per fact is read in order, and that guess is returned.
    """
    items = value.get(key) if isinstance(value, dict) else value
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        return None, []
    count = len(facts)
    by_id: dict[int, dict[str, Any]] = {}
    for item in items:
        number = _integer(item.get("id"))
        if number is not None:
            by_id.setdefault(number, item)
    if all(i in by_id for i in range(1, count + 1)):
        return [by_id[i] for i in range(1, count + 1)], []
    position = {_fold(text): i for i, text in enumerate(facts)}
    by_text: dict[int, dict[str, Any]] = {}
    for item in items:
        index = position.get(_fold(item.get("fact") or item.get("statement") or item.get("text")))
        if index is not None:
            by_text.setdefault(index, item)
    if len(by_text) == count:
        return [by_text[i] for i in range(count)], []
    if len(items) == count:
        return list(items), [_IN_ORDER]
    return None, []


_IN_ORDER = "entries read in order: their ids do not number the facts 1..n, nor do their texts name them"


def _integer(value: Any) -> int | None:
    """Read a whole number written as one (2, 2.0) or as text ("2"); None for anything else, booleans included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return None


def _read_verdicts(value: Any, facts: Sequence[str]) -> tuple[Verdicts | None, list[str]]:
    entries, guesses = _entries(value, "verdicts", facts)
    if entries is None:
        return None, []
    correct, pointable = [], []
    for entry in entries:
        c, p = _flag(entry.get("correct", entry.get("verification"))), _flag(entry.get("pointable", True))
        if c is None or p is None:
            return None, []
        correct.append(c)
        pointable.append(p)
    return Verdicts(tuple(correct), tuple(pointable)), guesses


_NO_MATCH = (None, "None", "none", "null", "")


def _read_matches(value: Any, facts: Sequence[str], references: int) -> tuple[tuple[int | None, ...] | None, list[str]]:
    """Read each fact's reference index (None: no match); a reference that names none is read as no match, and said."""
    entries, guesses = _entries(value, "matches", facts)
    if entries is None:
        return None, []
    out: list[int | None] = []
    guessed: list[str] = []
    for number, entry in enumerate(entries, start=1):
        # Ours number reference facts from 1; DeCapBench's "matched_oracle_id" counts from 0.
        key, base = ("reference", 1) if "reference" in entry else ("matched_oracle_id", 0)
        if key not in entry:
            guessed.append(f"fact {number}: none given")
            out.append(None)
            continue
        ref = entry[key]
        if isinstance(ref, (str, type(None))) and ref in _NO_MATCH:
            out.append(None)
            continue
        # 0 and "0" are one reference (the official code counts them as two).
        index = _integer(ref)
        if index is None or not 0 <= index - base < references:
            guessed.append(f"fact {number}: {ref!r}")
            out.append(None)
        else:
            out.append(index - base)
    if guessed:
        named = "; ".join(guessed)
        guesses = [*guesses, f"read as unmatched, naming none of the {references} reference facts: {named}"]
    return tuple(out), guesses


def _flag(value: Any) -> bool | None:
    """Read a yes/no judgment written as a boolean, 1/0 or a word; None if it is neither."""
    if isinstance(value, (bool, int, str)):
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    return None


def _rating(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 1 <= number <= 10 else None
