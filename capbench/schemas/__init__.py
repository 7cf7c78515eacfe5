"""JSON schemas (draft 2020-12) of capbench's results files and of its leaderboard report.

- ``manifest``: a run's ``manifest.json``;
- ``score-line``: one line of a run's ``<metric>.jsonl``;
- ``leaderboard``: what ``capbench leaderboard --json`` prints and
  :func:`capbench.leaderboard.leaderboard_report` returns.

They describe results format 2 (:data:`capbench.records.RESULTS_FORMAT`); ``docs/results-format.md``
describes the files, the older formats and how each is read.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

NAMES = ("manifest", "score-line", "leaderboard")


def load_schema(name: str) -> dict[str, Any]:
    """Return the schema ``name`` (one of :data:`NAMES`) as a dict.

    Raises:
        KeyError: no such schema.
    """
    if name not in NAMES:
        raise KeyError(f"no schema {name!r}; there are: {', '.join(NAMES)}")
    return json.loads(files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8"))
