"""Engine specs as users write them: ``ENGINE:MODEL`` with ``KEY=VALUE`` options, or a small YAML file.

A YAML spec file holds ``engine``, ``model`` and an optional ``options`` mapping::

    engine: openai
    model: Qwen/Qwen2.5-72B-Instruct
    options:
      base_url: [http://node1:8000/v1, http://node2:8000/v1]
      concurrency: 32

Options given on the command line override the file's. Secrets are never options: API keys
come from the environment only (the openai engine's ``api_key_env`` names the variable).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capbench.errors import ConfigError

_SECRET_WORDS = ("key", "token", "secret", "password")
#: Engines whose model is a hub id or a checkpoint folder -> the model files they also load as they are.
_CHECKPOINT_FILES: dict[str, tuple[str, ...]] = {"hf": (), "vllm": (".gguf",)}


@dataclass(frozen=True)
class EngineSpec:
    """A backend, a model and the constructor options of the engine."""

    backend: str
    model: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``ENGINE:MODEL``, as tables and manifests show it."""
        return f"{self.backend}:{self.model}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict for manifests (options hold no secrets: see :func:`parse_engine`)."""
        return {"engine": self.backend, "model": self.model, "options": dict(self.options)}


def parse_engine(spec: str, options: Sequence[str] | Mapping[str, Any] = (), base_url: str | None = None) -> EngineSpec:
    """Parse ``ENGINE:MODEL`` or a YAML spec file, then options (``KEY=VALUE`` strings or a mapping) and a base URL.

    Raises:
        ConfigError: the spec, a file or an option is malformed, or an option looks like a secret.
    """
    from capbench import registry

    if spec.endswith((".yaml", ".yml")) and Path(spec).is_file():
        backend, model, merged = _read_yaml(Path(spec))
    else:
        backend, sep, model = spec.partition(":")
        if not sep and spec.endswith((".yaml", ".yml")):
            raise ConfigError(f"{spec}: engine spec file not found; check the path")
        if not sep or not model:
            raise ConfigError(f"engine spec {spec!r} is not ENGINE:MODEL (e.g. llamacpp:smollm2) or a .yaml file")
        merged = {}
    if backend not in registry.engines.entries():
        raise ConfigError(f"unknown engine {backend!r} in {spec!r}; {registry.engines.available()}")
    if backend in _CHECKPOINT_FILES:  # a mistyped folder is named now, not by the hub lookup after a load
        from capbench.engines.models import local_model_folder

        local_model_folder(model, f"{backend} engine", _CHECKPOINT_FILES[backend])
    if isinstance(options, Mapping):
        merged.update({str(k).replace("-", "_"): v for k, v in options.items()})
    else:
        merged.update(parse_options(options))
    if base_url:
        merged["base_url"] = base_url
    for name in merged:
        if any(word in name.lower() for word in _SECRET_WORDS) and name != "api_key_env":
            raise ConfigError(
                f"engine option {name!r} looks like a secret; secrets come from the environment only "
                "(e.g. api_key_env=MY_KEY_VARIABLE names the variable that holds the key)"
            )
        for value in _strings(merged[name]):
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*@", value):
                raise ConfigError(
                    f"engine option {name!r} holds a URL with a user name or password; secrets come from the "
                    "environment only (e.g. api_key_env=MY_KEY_VARIABLE names the variable that holds the key): "
                    "give the URL without them"
                )
    return EngineSpec(backend, model, merged)


def _strings(value: Any) -> list[str]:
    """The strings in an option's value (a string, or a list of them)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; values are read as YAML scalars (numbers, true/false, null, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"engine option {pair!r} is not KEY=VALUE (e.g. dtype=float32)")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip().replace("-", "_")] = raw
    return out


def _read_yaml(path: Path) -> tuple[str, str, dict[str, Any]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("engine"), str) or not isinstance(data.get("model"), str):
        raise ConfigError(f"{path}: an engine spec file needs 'engine' and 'model' strings (and optional 'options')")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: 'options' must be a mapping of option names to values")
    unknown = sorted(set(data) - {"engine", "model", "options"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; use engine, model and options")
    return data["engine"], data["model"], {str(k).replace("-", "_"): v for k, v in options.items()}


def check_options(cls: type, spec: EngineSpec) -> None:
    """Raise a ConfigError naming the options the engine's constructor does not take."""
    accepted = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    unknown = sorted(k for k in spec.options if k not in accepted)
    if unknown:
        valid = ", ".join(k for k in accepted if k != "model")
        raise ConfigError(f"engine {spec.backend!r} takes no option {', '.join(unknown)}; its options: {valid}")
