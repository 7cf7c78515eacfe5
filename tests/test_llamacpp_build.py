"""The embedded judge's llama.cpp build: what it was compiled with, and whether it is the portable one.

The texts below are ``llama_print_system_info()`` as llama-cpp-python 0.3.36 prints it on the
builds named; the last test checks the build installed here.
"""

from __future__ import annotations

import signal
import sys
import warnings
from pathlib import Path

import pytest

from capbench.engines import llamacpp_build
from capbench.engines.llamacpp_build import Build, NonPortableBuildWarning, parse_system_info
from capbench.errors import EngineError

PORTABLE = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "  # noqa: E501
NATIVE_AVX512 = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
ARM = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | SVE_CNT = 16 | LLAMAFILE = 1 | REPACK = 1 | "
CUDA_AND_CPU = "CUDA : ARCHS = 900 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | " + PORTABLE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the portable x86-64 build
        (PORTABLE, {"CPU": ("SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "LLAMAFILE", "OPENMP", "REPACK")}),
        # a feature carrying a number keeps it; a 0 is off
        (ARM + "KLEIDIAI = 0 | ",
         {"CPU": ("NEON", "ARM_FMA", "FP16_VA", "DOTPROD", "SVE_CNT=16", "LLAMAFILE", "REPACK")}),
        # two backends one after the other
        (CUDA_AND_CPU,
         {"CUDA": ("ARCHS=900", "USE_GRAPHS", "PEER_MAX_BATCH_SIZE=128"), "CPU": parse_system_info(PORTABLE)["CPU"]}),
        # nothing reported
        ("", {}),
    ],
)  # fmt: skip
def test_parse_system_info(text: str, expected: dict) -> None:
    assert parse_system_info(text) == expected


@pytest.mark.parametrize(
    ("text", "version", "problem"),
    [
        (PORTABLE, "0.3.36", None),
        (NATIVE_AVX512, "0.3.36", "built with AVX512, AVX512_VBMI, AVX512_VNNI, AVX512_BF16 beyond the portable set"),
        (ARM, "0.3.36", "built for another instruction set (NEON ARM_FMA FP16_VA DOTPROD SVE_CNT=16)"),
        (PORTABLE.replace("BMI2 = 1 | ", ""), "0.3.36", "built without BMI2"),
        (PORTABLE, "0.3.35", "llama-cpp-python is 0.3.35, not the reference 0.3.36"),
    ],
)
def test_a_build_other_than_the_portable_one_is_named(text: str, version: str, problem: str | None) -> None:
    found = Build(version, parse_system_info(text)).problem()
    assert found == problem if problem is None else problem in found


def test_kernels_name_every_backend_and_feature() -> None:
    build = Build("0.3.36", parse_system_info(CUDA_AND_CPU))
    cpu = "CPU: SSE3 SSSE3 AVX AVX2 F16C FMA BMI2 LLAMAFILE OPENMP REPACK"
    assert build.kernels() == f"CUDA: ARCHS=900 USE_GRAPHS PEER_MAX_BATCH_SIZE=128; {cpu}"
    assert build.kernels() != Build("0.3.36", parse_system_info(NATIVE_AVX512)).kernels()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu pni ssse3 avx avx2 fma f16c bmi2\n\n")
    assert llamacpp_build.cpu_flags(cpuinfo) == {"fpu", "pni", "ssse3", "avx", "avx2", "fma", "f16c", "bmi2"}
    assert llamacpp_build.cpu_flags(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("flags", "machine", "missing"),
    [
        ({"pni", "ssse3", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f"}, "x86_64", []),
        ({"pni", "ssse3", "avx", "sse4_2"}, "x86_64", ["AVX2", "FMA", "F16C", "BMI2"]),  # Sandy Bridge
        (set(), "aarch64", []),  # not x86: the x86 instruction set does not apply
        (None, "x86_64", []),  # flags unknown: nothing to say
    ],
)
def test_missing_cpu_features(flags: set[str] | None, machine: str, missing: list[str], monkeypatch) -> None:
    monkeypatch.setattr(llamacpp_build, "cpu_flags", lambda: None)
    assert llamacpp_build.missing_cpu_features(flags, machine) == missing


def test_a_cpu_without_avx2_gets_one_line_not_an_illegal_instruction(monkeypatch) -> None:
    monkeypatch.setattr(llamacpp_build, "missing_cpu_features", lambda: ["AVX2", "FMA"])
    # the probe stands in for a library that executes an AVX2 instruction on load
    monkeypatch.setattr(llamacpp_build, "PROBE", f"import os; os.kill(os.getpid(), {int(signal.SIGILL)})")
    with pytest.raises(EngineError, match=r"this CPU lacks AVX2, FMA, .* illegal instruction") as info:
        llamacpp_build.check_cpu()
    assert "\n" not in str(info.value) and "--judge openai:" in str(info.value)


def test_a_native_build_for_an_old_cpu_still_runs(monkeypatch) -> None:
    monkeypatch.setattr(llamacpp_build, "missing_cpu_features", lambda: ["AVX2"])
    monkeypatch.setattr(llamacpp_build, "PROBE", "print('CPU : SSE3 = 1 | ')")
    llamacpp_build.check_cpu()  # the library loaded in the child: no error


def test_a_nonportable_build_is_warned_about_once(monkeypatch) -> None:
    monkeypatch.setattr(llamacpp_build, "_warned", False)
    native = Build("0.3.36", parse_system_info(NATIVE_AVX512))
    with pytest.warns(NonPortableBuildWarning, match=r"AVX512.*will not match.*CMAKE_ARGS=") as caught:
        llamacpp_build.warn_if_not_portable(native)
        llamacpp_build.warn_if_not_portable(native)
    assert len(caught) == 1


def test_the_portable_build_is_not_warned_about(monkeypatch) -> None:
    monkeypatch.setattr(llamacpp_build, "_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llamacpp_build.warn_if_not_portable(Build("0.3.36", parse_system_info(PORTABLE)))


def test_the_makefile_reads_the_build_from_this_module(tmp_path: Path) -> None:
    import subprocess

    script = Path(llamacpp_build.__file__)
    run = [sys.executable, str(script)]
    assert subprocess.run([*run, "version"], capture_output=True, text=True, check=True).stdout.strip() == "0.3.36"
    args = subprocess.run([*run, "cmake-args"], capture_output=True, text=True, check=True).stdout.split()
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX2=ON" in args and "-DGGML_AVX512=OFF" in args
    assert subprocess.run([*run, "nonsense"], capture_output=True, text=True).returncode == 2
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    assert "$(LLAMA_BUILD) cmake-args" in makefile and "$(LLAMA_BUILD) check-cpu" in makefile


@pytest.mark.engine
def test_the_installed_llama_cpp_is_the_portable_build() -> None:
    """Golden comparisons with the embedded judge hold only on the portable build (see llamacpp_build)."""
    pytest.importorskip("llama_cpp")
    build = llamacpp_build.installed()
    problem = build.problem()
    assert problem is None, (
        f"{problem}; kernels: {build.kernels()}. The embedded judge's numbers, and so the golden tests, would "
        f"depend on this CPU. Rebuild it portable: `make clean install`, or {llamacpp_build.REBUILD}"
    )
