"""The letter parser on real-looking judge replies: each case names what it covers."""

from __future__ import annotations

import pytest

from capbench.metrics.parsing import parse_choice

OPTIONS = ["red", "blue", "green", "a red car", "Cannot be determined from the caption"]

CASES = [
    ("B", 1),  # the protocol's ideal reply
    ("b", 1),  # lower-case bare letter
    ("(C)", 2),  # bracketed
    ("**D**", 3),  # markdown bold
    (" C\n", 2),  # whitespace around
    ("B.", 1),  # trailing full stop
    ("Answer: B", 1),  # stated answer
    ("The answer is (C).", 2),  # stated, bracketed
    ("The correct option is D", 3),  # "option" phrasing
    ("B. blue", 1),  # letter then the option text
    ("B) blue", 1),  # letter with parenthesis
    ("blue", 1),  # option text only
    ("It is a red car.", 3),  # a multi-word option inside a sentence
    ("2", 1),  # option number
    ("<think>It could be A or B.</think>\nC", 2),  # only what follows the reasoning counts
    ("E", 4),  # the cannot-answer option's letter
    ("F", None),  # a letter past the last option
    ("The answer is a cat", None),  # lower-case article is not a letter
    ("I think it is red or blue", None),  # one-word options must be the whole reply
    ("no idea", None),  # not the option "No" of a yes/no question
    ("It is a red car or a blue bus", 3),  # the one multi-word option spelled out
    ("", None),  # empty reply
    ("Sorry, I cannot see images.", None),  # a refusal
    ("9", None),  # an option number past the end
]


@pytest.mark.parametrize(("reply", "expected"), CASES)
def test_parse_choice(reply: str, expected: int | None):
    assert parse_choice(reply, OPTIONS) == expected
