"""capbench's state folder, ``$CAPBENCH_HOME``: the judge-call cache and materialised images live there."""

from __future__ import annotations

import os
from pathlib import Path


def capbench_home() -> Path:
    """Return capbench's state directory: ``$CAPBENCH_HOME`` or ``~/.cache/capbench``."""
    home = os.environ.get("CAPBENCH_HOME")
    return Path(home) if home else Path.home() / ".cache" / "capbench"
