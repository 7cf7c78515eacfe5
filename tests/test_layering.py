"""The rooms of DESIGN.md, enforced: which capbench modules may import which.

Every import of every module under ``capbench/`` is read from its syntax tree, those inside
functions included (a lazy import is still a dependency), with relative imports resolved and
``from package import module`` counted as importing the module.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "capbench"
CLI = re.compile(r"^capbench\.cli(_\w+)?(\.|$)")


@dataclass(frozen=True)
class Import:
    """One imported module (or, for ``from capbench.engines import X``, module and name) at a place."""

    file: str
    line: int
    module: str
    name: str | None = None

    def __str__(self) -> str:
        what = f"{self.module} (name {self.name})" if self.name else self.module
        return f"{self.file}:{self.line} imports {what}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    """Whether ``name`` is a module or package inside the repository (capbench or capbench_rl)."""
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path, root: Path = REPO, is_module: Callable[[str], bool] = _is_module) -> Iterator[Import]:
    """Yield every import in the file at ``path`` (a file under ``root``), at any depth."""
    file = str(path.relative_to(root))
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=file)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(file, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if is_module(sub):
                    yield Import(file, node.lineno, sub)
                else:
                    yield Import(file, node.lineno, module, alias.name)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(file, node.lineno, node.args[0].value)


def _files(pattern: str) -> list[Path]:
    return sorted(PACKAGE.glob(pattern))


ALL = _files("**/*.py")
IMPORTS = [imp for path in ALL for imp in _imports(path)]


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _is_cli(module: str) -> bool:
    return bool(CLI.match(module))


def _public_api(imp: Import) -> bool:
    """``capbench.api``, or a name taken from the ``capbench`` package itself (which re-exports the API)."""
    return _under(imp.module, "capbench.api") or (imp.module == "capbench" and imp.name is not None)


def _stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names or module == "__future__"


@functools.cache
def _protocol_names() -> frozenset[str]:
    """The names metrics may take from ``capbench.engines``: those ``capbench.engines.base`` defines."""
    tree = ast.parse((PACKAGE / "engines" / "base.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(n for n in names if not n.startswith("_"))


def _metrics_engine_use(imp: Import) -> bool:
    """Metrics may use the engine protocol, never a concrete engine, the cache or the engine table."""
    if imp.module == "capbench.engines.base":
        return False
    if imp.module == "capbench.engines":
        return imp.name is None or imp.name not in _protocol_names()
    return _under(imp.module, "capbench.engines")


#: (rule, files it governs (a glob under capbench/), the test an import fails).
#: ``capbench/registry.py`` is deliberately under no room rule: it sits beside records as the
#: table of metrics, benchmarks and engines, and imports those tables lazily by design.
RULES: list[tuple[str, str, Callable[[Import], bool]]] = [
    ("capbench never imports capbench_rl", "**/*.py", lambda i: _under(i.module, "capbench_rl")),
    (
        "records.py imports only the standard library, capbench.errors and capbench.hashing",
        "records.py",
        lambda i: not (_stdlib(i.module) or _under(i.module, "capbench.errors", "capbench.hashing")),
    ),
    *(
        (
            f"{name} imports from capbench only records, errors and hashing",
            name,
            lambda i: (
                _under(i.module, "capbench")
                and not _under(i.module, "capbench.records", "capbench.errors", "capbench.hashing")
            ),
        )
        for name in ("home.py", "images.py")
    ),
    (
        "data/ imports no engines, metrics, evaluation, public API or CLI",
        "data/**/*.py",
        lambda i: (
            _under(i.module, "capbench.engines", "capbench.metrics", "capbench.evaluation")
            or _public_api(i)
            or _is_cli(i.module)
        ),
    ),
    (
        "engines/ imports no data, metrics, evaluation, public API, leaderboard or CLI",
        "engines/**/*.py",
        lambda i: (
            _under(i.module, "capbench.data", "capbench.metrics", "capbench.evaluation", "capbench.leaderboard")
            or _public_api(i)
            or _is_cli(i.module)
        ),
    ),
    (
        "metrics/ imports no data, evaluation, public API or CLI",
        "metrics/**/*.py",
        lambda i: _under(i.module, "capbench.data", "capbench.evaluation") or _public_api(i) or _is_cli(i.module),
    ),
    (
        "metrics/ takes from engines only the protocol (capbench.engines.base, or its names from capbench.engines)",
        "metrics/**/*.py",
        _metrics_engine_use,
    ),
]


def _cli_files() -> set[str]:
    return {str(p.relative_to(REPO)) for p in [*_files("cli*.py"), PACKAGE / "__main__.py"]}


@pytest.mark.parametrize(("rule", "pattern", "breaks"), RULES, ids=[r[0] for r in RULES])
def test_room_rule(rule: str, pattern: str, breaks: Callable[[Import], bool]):
    governed = {str(p.relative_to(REPO)) for p in _files(pattern)}
    assert governed, f"no file matches capbench/{pattern}: the rule {rule!r} checks nothing"
    found = [str(imp) for imp in IMPORTS if imp.file in governed and breaks(imp)]
    assert not found, f"{rule}:\n  " + "\n  ".join(found)


#: Per rule, in RULES' order: (an import it refuses, one it lets through), so a rule that checks nothing fails.
EXAMPLES = [
    (Import("f", 1, "capbench_rl.rewards"), Import("f", 1, "capbench.records")),
    (Import("f", 1, "numpy"), Import("f", 1, "capbench.errors", "InputError")),
    (Import("f", 1, "capbench.engines.cache"), Import("f", 1, "PIL")),
    (Import("f", 1, "capbench.data"), Import("f", 1, "capbench.hashing")),
    (Import("f", 1, "capbench.engines.images"), Import("f", 1, "capbench.images")),
    (Import("f", 1, "capbench.leaderboard"), Import("f", 1, "capbench.home")),
    (Import("f", 1, "capbench.data", "Benchmark"), Import("f", 1, "capbench.engines.base", "Request")),
    (Import("f", 1, "capbench.engines.llamacpp"), Import("f", 1, "capbench.engines", "Request")),
]


@pytest.mark.parametrize(("rule", "example"), list(zip(RULES, EXAMPLES, strict=True)), ids=[r[0] for r in RULES])
def test_each_rule_refuses_what_it_should(rule: tuple, example: tuple[Import, Import]):
    bad, good = example
    assert rule[2](bad) and not rule[2](good)
    if rule[1] == "data/**/*.py":  # the CLI and the public API, by any spelling
        assert rule[2](Import("f", 1, "capbench.cli_eval")) and rule[2](Import("f", 1, "capbench", "evaluate"))


def test_only_the_cli_imports_the_cli():
    allowed = _cli_files()
    found = [str(imp) for imp in IMPORTS if imp.file not in allowed and _is_cli(imp.module)]
    assert not found, "nothing below the CLI imports capbench.cli*:\n  " + "\n  ".join(found)


def test_the_checker_sees_lazy_relative_and_from_imports(tmp_path: Path):
    folder = tmp_path / "capbench" / "metrics"
    folder.mkdir(parents=True)
    (folder / "probe.py").write_text(
        "from . import base\n"
        "from ..engines import cache, Request\n"
        "def f():\n"
        "    from capbench import cli_eval, __version__\n"
        "    import importlib\n"
        "    importlib.import_module('capbench_rl.data')\n"
    )
    modules = {"capbench.metrics.base", "capbench.engines.cache", "capbench.cli_eval"}
    got = [(i.line, i.module, i.name) for i in _imports(folder / "probe.py", tmp_path, modules.__contains__)]
    assert got == [
        (1, "capbench.metrics.base", None),
        (2, "capbench.engines.cache", None),
        (2, "capbench.engines", "Request"),
        (4, "capbench.cli_eval", None),
        (4, "capbench", "__version__"),
        (5, "importlib", None),
        (6, "capbench_rl.data", None),
    ]
    assert str(Import("capbench/metrics/probe.py", 2, "capbench.engines.cache")) == (
        "capbench/metrics/probe.py:2 imports capbench.engines.cache"
    )
    assert _metrics_engine_use(Import("f", 2, "capbench.engines.cache"))
    assert not _metrics_engine_use(Import("f", 2, "capbench.engines", "Request"))
    assert _metrics_engine_use(Import("f", 2, "capbench.engines", "build_engine"))
    assert _public_api(Import("f", 4, "capbench", "__version__")) and not _public_api(
        Import("f", 4, "capbench.registry")
    )
    assert _is_cli("capbench.cli_eval") and _is_cli("capbench.cli") and not _is_cli("capbench.client")


HEAVY = ("torch", "transformers", "vllm", "llama_cpp", "pandas", "numpy", "matplotlib", "rich")


def test_importing_the_cli_loads_no_heavy_package():
    probe = f"import sys, capbench.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = [m for m in done.stdout.strip().split(",") if m]
    assert not loaded, f"`import capbench.cli` loaded {loaded}: import them inside the command that needs them"
