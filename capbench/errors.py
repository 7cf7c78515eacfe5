"""Errors that capbench raises on purpose; the CLI prints them as one line."""

from __future__ import annotations


class CapbenchError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ConfigError(CapbenchError):
    """An option, a judge spec or a recipe is invalid."""


class InputError(CapbenchError):
    """An input file, record or id is missing or malformed."""


class EngineError(CapbenchError):
    """An engine cannot be built or failed in a way that retrying will not fix."""


class MissingDependencyError(ConfigError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package {package!r}, which is not installed. "
            f"Install it with: pip install 'capbench[{extra}]'"
        )
        self.package = package
        self.extra = extra
