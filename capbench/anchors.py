"""Stable HTML anchors shared by the inspector report and the leaderboard page.

A leaderboard cell (caption set x metric) links to ``<report>#<anchor(set, metric)>`` and an image row of
the report carries ``id=<anchor(set, metric, sample)>``; both pages compute the same string here.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _part(text: str) -> str:
    """A readable, collision-free id fragment: the safe characters of ``text`` and a short hash of all of it."""
    slug = _UNSAFE.sub("-", text).strip("-")[:40] or "x"
    return f"{slug}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def anchor(caption_set: str, metric: str | None = None, sample: str | None = None) -> str:
    """The HTML id of a caption set, of one metric of it, or of one sample under that metric."""
    parts = ["set", _part(caption_set)]
    if metric is not None:
        parts += ["m", _part(metric)]
    if sample is not None:
        parts += ["s", _part(sample)]
    return "_".join(parts)
