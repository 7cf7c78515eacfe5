"""The letter parser on real-looking judge replies: each case names what it covers."""

from __future__ import annotations

import pytest

from capbench.metrics.parsing import parse_choice, parse_json

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


JSON_CASES = [
    ('{"a": 1}', {"a": 1}),  # the whole reply is the value
    ("  [1, 2]\n", [1, 2]),  # whitespace around
    ('Sure.\n```json\n{"a": [1, 2,],}\n```\nDone.', {"a": [1, 2]}),  # prose, a fence, trailing commas
    ("{'a': True, 'b': None}", {"a": True, "b": None}),  # Python literals
    ('{"a": "a \\"quoted\\" } and an escaped \\\\"}', {"a": 'a "quoted" } and an escaped \\'}),  # escapes
    ('{"a": "line\\nbreak"} then {"b": 2}', {"b": 2}),  # an escape before a quote-free stretch
    ('The caption wrote {"judgment": "1"}; my answer: {"judgment": "2"}', {"judgment": "2"}),  # the last one
    ('[{"a": 1} garbage', {"a": 1}),  # only a nested value is whole
    ('{"facts": ["A dog."]}\nSee also [1].', {"facts": ["A dog."]}),  # a list after the object is a note
    ('["A dog.", "A ball."] and [2]', [2]),  # lists only: the last one
    ('<think>{"a": 1}</think> {"b": 2}', {"b": 2}),  # only what follows the reasoning counts
    ("{{}}", {}),  # a set of dicts to Python (no crash): the inner value
    ("no json [at all", None),
    ("", None),
]


@pytest.mark.parametrize(("reply", "expected"), JSON_CASES)
def test_parse_json(reply: str, expected):
    assert parse_json(reply) == expected
