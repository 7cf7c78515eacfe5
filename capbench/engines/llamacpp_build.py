"""Which llama.cpp build the embedded judge runs, and whether it is the portable one.

llama-cpp-python compiles llama.cpp when it is installed, by default for the build machine's CPU
(``GGML_NATIVE``, ``-march=native``). The kernels, and with them the judge's log-likelihoods and
sampled replies, then change with the CPU: an AVX-512 build scores capbench's demo differently
from an AVX2 one. capbench's reference build is *portable*: llama-cpp-python ``REFERENCE_VERSION``
compiled for one fixed x86-64 instruction set (``PORTABLE_FEATURES``: AVX2, FMA, F16C, BMI2 and
what they imply; nothing newer), so every x86-64 CPU with AVX2 runs the same kernels and gets the
same numbers. ``make install`` builds it; ``REBUILD`` is the one line for pip users.

What a build was compiled with is read from ``llama_print_system_info()``, which lists the CPU
backend's compile-time features. The engine's fingerprint names them, so answers of two builds
that could differ never share a cache entry or a golden comparison.

This module imports only the standard library at the top: the Makefile runs it as a script
(``python capbench/engines/llamacpp_build.py check-cpu``) before anything is installed.
"""

from __future__ import annotations

import platform
import signal
import subprocess
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

REFERENCE_VERSION = "0.3.36"
# The CPU backend's instruction-set features that the portable build reports, in its order.
PORTABLE_FEATURES = ("SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2")
# Instruction-set features llama.cpp may report; the others (LLAMAFILE, OPENMP, REPACK, ...) are
# build options, kept in the fingerprint but not part of the portability check.
ISA_FEATURES = frozenset(
    {
        *PORTABLE_FEATURES,
        *("AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8"),
        *("NEON", "ARM_FMA", "FP16_VA", "MATMUL_INT8", "SVE", "DOTPROD", "SVE_CNT", "SME", "SME2"),
        *("RISCV_V", "RVV_VLEN", "VSX", "VXE", "WASM_SIMD"),
    }
)
# /proc/cpuinfo names of what the portable build executes (SSE3 is "pni" there).
PORTABLE_CPU_FLAGS = {
    "pni": "SSE3",
    "ssse3": "SSSE3",
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "bmi2": "BMI2",
}
# The CMake options of the portable build (the Makefile reads them from here: one source).
CMAKE_ARGS = " ".join(
    (
        "-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF",
        "-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON",
        "-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF",
        "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF",
    )
)
REBUILD = (
    f'CMAKE_ARGS="{CMAKE_ARGS}" pip install --force-reinstall --no-deps --no-cache-dir '
    f"--no-binary llama-cpp-python llama-cpp-python=={REFERENCE_VERSION}"
)
# Run in a child process when the CPU lacks a portable feature: a build that needs it dies there
# of an illegal instruction instead of taking capbench down.
PROBE = "import sys, llama_cpp; sys.stdout.write(llama_cpp.llama_print_system_info().decode())"


class NonPortableBuildWarning(UserWarning):
    """The installed llama.cpp is not capbench's portable build: its numbers are not the published ones."""


@dataclass(frozen=True)
class Build:
    """An installed llama.cpp: the llama-cpp-python version and the features of each backend."""

    version: str
    features: dict[str, tuple[str, ...]]

    def kernels(self) -> str:
        """Return the backends and their compile-time features, e.g. ``CPU: SSE3 AVX AVX2 ...``."""
        return "; ".join(f"{backend}: {' '.join(names)}" for backend, names in self.features.items())

    def problem(self) -> str | None:
        """Say how this build differs from the portable reference build, or return None."""
        cpu = self.features.get("CPU", ())
        isa = [f for f in cpu if f.split("=")[0] in ISA_FEATURES]
        extra = [f for f in isa if f not in PORTABLE_FEATURES]
        lacking = [f for f in PORTABLE_FEATURES if f not in isa]
        if len(lacking) == len(PORTABLE_FEATURES):
            return f"llama.cpp was built for another instruction set ({' '.join(isa) or 'none named'}), not x86-64's"
        if extra:
            return f"llama.cpp was built with {', '.join(extra)} beyond the portable set (a native build for this CPU)"
        if lacking:
            return f"llama.cpp was built without {', '.join(lacking)} (not the portable x86-64 build)"
        if self.version != REFERENCE_VERSION:
            return f"llama-cpp-python is {self.version}, not the reference {REFERENCE_VERSION}"
        return None


def kernel_difference(recorded: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """Say how two llamacpp fingerprints' builds differ (version, kernels), or return None if they agree.

    Two answers of the same model and prompt that differ under one build are a regression; under
    two builds they may be only the kernels rounding differently. Tests use this to say which.
    """
    if "kernels" not in recorded:
        return f"the recording names no kernels (llama-cpp-python {recorded.get('llama_cpp', '?')}, an older capbench)"
    parts = [
        f"{name}: recorded {recorded.get(key)!r}, here {live.get(key)!r}"
        for key, name in (("llama_cpp", "llama-cpp-python"), ("kernels", "kernels"))
        if recorded.get(key) != live.get(key)
    ]
    return "; ".join(parts) or None


def parse_system_info(text: str) -> dict[str, tuple[str, ...]]:
    """Return ``{backend: (feature, ...)}`` from ``llama_print_system_info()``'s text.

    The text is ``BACKEND : NAME = VALUE | NAME = VALUE | ...`` per backend, one after another;
    a feature counts when its value is not "0" (SVE_CNT and RVV_VLEN carry a number: kept as
    ``NAME=VALUE``).
    """
    features: dict[str, list[str]] = {}
    backend = None
    for part in (p.strip() for p in text.split("|")):
        if not part:
            continue
        if " : " in part:  # a new backend's first feature follows its name
            backend, part = (s.strip() for s in part.split(" : ", 1))
            features.setdefault(backend, [])
        if backend is None or "=" not in part:
            continue
        name, value = (s.strip() for s in part.split("=", 1))
        if value not in ("0", ""):
            features[backend].append(name if value == "1" else f"{name}={value}")
    return {backend: tuple(names) for backend, names in features.items()}


@lru_cache(maxsize=1)
def installed() -> Build:
    """Return the installed llama.cpp build (imports llama_cpp; check the CPU first)."""
    from importlib import metadata

    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    return Build(metadata.version("llama-cpp-python"), parse_system_info(info))


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """Return this CPU's feature flags as Linux names them, or None where they cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def missing_cpu_features(flags: set[str] | None = None, machine: str | None = None) -> list[str]:
    """Return the portable build's features this x86-64 CPU lacks (none elsewhere, or when unknown)."""
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return []
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return []
    return [name for flag, name in PORTABLE_CPU_FLAGS.items() if flag not in flags]


def check_cpu() -> None:
    """Raise EngineError when this CPU cannot run the installed llama.cpp, saying what it lacks.

    Only a CPU without a portable feature is probed, in a child process: a build made for it
    natively runs, and one that needs the missing instructions dies there, not here.
    """
    lacking = missing_cpu_features()
    if not lacking:
        return
    from capbench.errors import EngineError

    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False)
    if probe.returncode == 0:
        return
    how = "an illegal instruction" if probe.returncode == -signal.SIGILL else f"exit code {probe.returncode}"
    raise EngineError(
        f"this CPU lacks {', '.join(lacking)}, which the installed llama.cpp (the embedded judge) needs "
        f"(loading it failed with {how}); build llama-cpp-python for this CPU with "
        f"CMAKE_ARGS=-DGGML_NATIVE=ON pip install --force-reinstall --no-deps --no-cache-dir --no-binary "
        f"llama-cpp-python llama-cpp-python (its numbers will differ from the published ones), "
        f"or use a served judge (--judge openai:MODEL)"
    )


_warned = False


def warn_if_not_portable(build: Build) -> None:
    """Warn, once per process, when ``build`` is not the portable reference build."""
    global _warned
    problem = build.problem()
    if problem is None or _warned:
        return
    _warned = True
    warnings.warn(
        f"{problem}: the embedded judge's numbers will not match capbench's published ones "
        f"(make demo, the golden files). Rebuild it portable: {REBUILD}",
        NonPortableBuildWarning,
        stacklevel=3,
    )


def main(argv: list[str]) -> int:
    """The Makefile's questions: ``check-cpu`` (exit 1 with one line when this CPU lacks what the
    portable build executes), ``cmake-args`` and ``version`` (print the portable build's)."""
    if argv == ["cmake-args"]:
        print(CMAKE_ARGS)
    elif argv == ["version"]:
        print(REFERENCE_VERSION)
    elif argv == ["check-cpu"]:
        lacking = missing_cpu_features()
        if lacking:
            print(
                f"capbench: this CPU lacks {', '.join(lacking)}, which the portable llama.cpp build (the "
                "embedded judge) needs; build it for this CPU with LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON (its "
                "numbers will not match the published ones), or skip the embedded judge.",
                file=sys.stderr,
            )
            return 1
    else:
        print("usage: python llamacpp_build.py check-cpu | cmake-args | version", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
