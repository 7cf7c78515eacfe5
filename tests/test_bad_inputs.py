"""A corpus of bad input for ``capbench eval``: each case gets a clear error or a counted failure.

Every case builds its bad input in a temporary folder and drives the CLI as a user would. An
error must be one line (``Error: ...``) that matches the case's pattern, with no traceback, and
must leave the results folder exactly as it was; a counted failure must finish the run and
count the item as failed. In both outcomes no half-written file may remain.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ScriptedEngine

from capbench.cli import main
from capbench.engines.base import Request, Response

pytestmark = pytest.mark.cli

MOON = '{"id": "moon", "caption": "The grey surface of the moon with craters."}\n'
DECAP_ID = "aar_test_04746.jpg"
ARENA_ID = "test_00000.jpg"
SECRET = "sk-do-not-print-0123456789"


class ContextLimitEngine(ScriptedEngine):
    """``ctx:N`` on the command line: answers "A", or fails a prompt longer than N characters, as a real engine does."""

    def __init__(self, model: str) -> None:
        super().__init__(self._reply, name=f"ctx{model}")
        self.limit = int(model)

    def _reply(self, request: Request) -> Response | str:
        size = sum(len(m.joined_text()) for m in request.messages)
        if size > self.limit:
            return Response(error=f"prompt of {size} characters exceeds the context of {self.limit}")
        return "A"


@pytest.fixture
def ctx_cli_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``--judge ctx:N`` (a judge with a context of N characters) available to the CLI."""
    from capbench import engines

    monkeypatch.setitem(engines.ENGINES, "ctx", ("test_bad_inputs", "ContextLimitEngine", "test engine"))


# --- builders of bad input: each writes into the test's folder and returns the CLI arguments ---------------


def _write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def captions(content: str | bytes, name: str = "caps.jsonl", *more: str) -> Callable[[Path], list[str]]:
    """A caption file with ``content``, scored on capbench-mini by the scripted judge, plus ``more`` arguments."""

    def build(folder: Path) -> list[str]:
        return ["-c", str(_write(folder, name, content)), "--judge", "scripted:A", *more]

    return build


def args(*more: str) -> Callable[[Path], list[str]]:
    """A good caption file and bad options; ``{tmp}`` in an option stands for the test's folder."""

    def build(folder: Path) -> list[str]:
        return [*captions(MOON)(folder), *(a.replace("{tmp}", str(folder)) for a in more)]

    return build


def _png(width: int, height: int) -> bytes:
    """A valid PNG of noise-free grey pixels, written by hand (no Pillow needed to make it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([128, 64, 32]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _bomb_png() -> bytes:
    """A PNG header that claims 100000x100000 pixels (ten gigapixels) over a few bytes of data."""
    small = _png(4, 4)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return small[:16] + ihdr + crc + small[33:]


def decapbench_image(image: bytes | None, images_dir: str = "images") -> Callable[[Path], list[str]]:
    """DeCapBench (a one-image reference file) with a vision judge; ``image`` None leaves the image out."""

    def build(folder: Path) -> list[str]:
        bundled = Path(__file__).resolve().parents[1] / "capbench/data/decapbench/human_annotated_oracle_facts.jsonl"
        first = bundled.read_text(encoding="utf-8").split("\n", 1)[0] + "\n"
        (folder / "images").mkdir(exist_ok=True)
        if image is not None:
            _write(folder, f"images/{DECAP_ID}", image)
        caps = _write(folder, "caps.jsonl", json.dumps({"image_path": DECAP_ID, "caption": "A bookshelf."}) + "\n")
        data = _write(folder, "reference.jsonl", first)
        return ["-b", "decapbench", "--data-file", str(data), "--images-dir", str(folder / images_dir),
                "-c", str(caps), "-m", "dcscore", "--judge", "scripted:A", "--vision-judge", "scripted:A"]  # fmt: skip

    return build


def caparena_image(image: bytes) -> Callable[[Path], list[str]]:
    """CapArena-Auto (a one-image data file) with a vision judge and the image given."""

    def build(folder: Path) -> list[str]:
        entry = {"captions": {"human": "A street.", "GPT-4o-0806": "A road."}, "ref_model": "GPT-4o-0806"}
        data = _write(folder, "caparena_auto_600.json", json.dumps({ARENA_ID: entry}))
        _write(folder, f"images/{ARENA_ID}", image)
        caps = _write(folder, "caps.json", json.dumps({ARENA_ID: "A street with cars."}))
        return ["-b", "caparena", "--data-file", str(data), "--images-dir", str(folder / "images"),
                "-c", str(caps), "-m", "arena", "--judge", "scripted:A", "--vision-judge", "scripted:A"]  # fmt: skip

    return build


def data_file(benchmark: str, content: str | None) -> Callable[[Path], list[str]]:
    """A benchmark's own data file (--data-file) holding ``content`` (None: the file does not exist)."""

    def build(folder: Path) -> list[str]:
        data = folder / "ref.json"
        if content is not None:
            _write(folder, "ref.json", content)
        metric = "arena" if benchmark == "caparena" else "dcscore"
        return ["-b", benchmark, "--data-file", str(data), "-m", metric, *captions(MOON)(folder)]

    return build


def results(manifest: str, scores: str | None = None, *more: str) -> Callable[[Path], list[str]]:
    """A results folder for the caption set 'caps' on capbench-mini that holds ``manifest`` (and a score log)."""

    def build(folder: Path) -> list[str]:
        run = folder / "results" / "mini" / "caps"
        _write(run, "manifest.json", manifest)
        if scores is not None:
            _write(run, "captionqa.jsonl", scores)
        return [*captions(MOON)(folder), *more]

    return build


def yaml_judge(text: str | bytes | None) -> Callable[[Path], list[str]]:
    """A judge given as a YAML spec file holding ``text`` (None: the file does not exist)."""

    def build(folder: Path) -> list[str]:
        spec = folder / "judge.yaml"
        if text is not None:
            _write(folder, "judge.yaml", text)
        return ["-c", str(_write(folder, "caps.jsonl", MOON)), "--judge", str(spec)]

    return build


def _other_benchmark_manifest() -> str:
    return json.dumps({"benchmark": "decapbench", "metrics": {}, "sessions": [], "status": "complete"})


_TRUNCATED_PNG = _png(64, 64)[:60]
_HUGE = "A grey moon. " * 80_000  # about 1 MB

# --- the corpus --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One kind of bad input and what ``capbench eval`` must do with it."""

    id: str
    build: Callable[[Path], list[str]]
    #: Pattern of the one-line error; None when the run must finish with a counted failure instead.
    error: str | None
    #: Exit status: 1 for capbench's errors, 2 for click's usage errors.
    code: int = 1
    #: For a counted failure: (metric, summary key, expected count).
    counted: tuple[str, str, int] | None = None


CASES = [
    # the caption file is missing, or is a folder
    Case("caption-file-missing", lambda d: ["-c", str(d / "nope.jsonl")], r"nope\.jsonl: caption file not found"),
    Case("caption-file-is-a-folder", lambda d: ["-c", str(d)], r": not a file; pass a JSONL or JSON file"),
    # an empty file, or one of blank lines
    Case("caption-file-empty", captions(""), r"caps\.jsonl: no captions found"),
    Case("caption-file-blank-lines", captions("\n \n\n"), r"caps\.jsonl: no captions found"),
    # not JSON at all, a JSON file cut short, a JSONL file whose last line was torn
    Case("not-json", captions("moon: a grey moon\n"), r"caps\.jsonl: not valid JSON \(Expecting value"),
    Case("truncated-json", captions('{"moon": "The grey surf', "caps.json"), r"caps\.json: not valid JSON"),
    Case("jsonl-torn-last-line", captions(MOON + '{"id": "astronaut", "capt'), r"caps\.jsonl:2: not valid JSON"),
    # a JSON value that is not a caption mapping, list or record
    Case("json-scalar", captions("42\n"), r"caps\.jsonl:1: expected a JSON object, got int"),
    # bytes that are not UTF-8 (Latin-1, UTF-16)
    Case("invalid-utf8", captions(b'{"id": "moon", "caption": "caf\xe9"}\n'), r"caps\.jsonl:1: not valid UTF-8"),
    Case("utf16-file", captions(MOON.encode("utf-16")), r"caps\.jsonl:1: not valid UTF-8"),
    # a raw NUL byte in the file; a NUL escaped in a caption (C-string engines would cut the caption there)
    Case("nul-byte-raw", captions(b'{"id": "moon", "caption": "a\x00b"}\n'), r"not valid JSON \(Invalid control"),
    Case("nul-escaped", captions('{"id": "moon", "caption": "a\\u0000b"}\n'), r"caption of id 'moon' holds a NUL"),
    # an escaped unpaired surrogate: a str that cannot be written back as UTF-8
    Case("lone-surrogate", captions('{"id": "moon", "caption": "a \\ud800 b"}\n'), r"'moon' holds an unpaired"),
    # a 1 MB caption: the judge's context cannot hold it, so every question is a counted failure,
    # and a run whose every judge call failed exits 1 (--fail-at's default)
    Case(
        "huge-caption",
        lambda d: ["-c", str(_write(d, "caps.json", json.dumps({"moon": _HUGE}))), "--judge", "ctx:20000"],
        None,
        1,
        ("captionqa", "failed", 13),
    ),
    # empty and whitespace-only captions
    Case("empty-caption", captions('{"id": "moon", "caption": ""}\n'), r"1 empty caption\(s\) \('moon'\)"),
    Case("blank-caption", captions('{"moon": " \\n\\t "}', "caps.json"), r"1 empty caption\(s\) \('moon'\)"),
    # a caption that is not a string: a number, null, a list
    Case("caption-number", captions('{"id": "moon", "caption": 3}\n'), r"line 1: 'caption' is int, expected a str"),
    Case("caption-null", captions('{"moon": null}', "caps.json"), r"caption of id 'moon' is NoneType, expected a"),
    Case("caption-list", captions('[{"id": "moon", "caption": ["a"]}]'), r"item 0: 'caption' is list, expected a"),
    # a record without a caption, a list item that is not a record
    Case("record-without-caption", captions('{"id": "moon", "text": "x"}\n'), r"line 1 lacks 'id' or 'caption'"),
    Case("list-of-strings", captions('["a grey moon"]', "caps.json"), r"item 0 is str, expected an object"),
    # the same id twice: on two JSONL lines, as two keys of a JSON mapping (json would keep the last silently)
    Case("duplicate-ids-jsonl", captions(MOON + MOON), r"id 'moon' appears twice \(line 1 and line 2\)"),
    Case(
        "duplicate-keys-json",
        captions('{"moon": "A grey moon.", "moon": "A white moon."}', "caps.json"),
        r"caps\.json: key 'moon' appears twice",
    ),
    # ids the benchmark does not have
    Case("unknown-ids", captions('{"id": "mars", "caption": "Red dust."}\n'), r"1 id\(s\) are not in benchmark 'mini'"),
    # options that name nothing: benchmark, metric (unknown, twice, none), limit 0, a flag the benchmark lacks
    Case(
        "unknown-benchmark", args("-b", "imagenet"), r"unknown benchmark 'imagenet'; choose from: .*entry-point group"
    ),
    Case("unknown-metric", args("-m", "bleu"), r"unknown metric 'bleu'; choose from"),
    Case("metric-named-twice", args("-m", "captionqa,captionqa"), r"a metric is named twice"),
    Case("no-metric-named", args("-m", " , "), r"--metrics ' , ' names no metric"),
    Case("limit-zero", args("--limit", "0"), r"Invalid value for '--limit': 0 is not in the range x>=1", 2),
    Case("images-dir-for-mini", args("--images-dir", "{tmp}"), r"benchmark 'mini' takes no --images-dir"),
    # judges: malformed spec, unknown engine, option without '=', unknown option, a secret as an option
    Case("judge-malformed", args("--judge", "gpt4"), r"engine spec 'gpt4' is not ENGINE:MODEL"),
    Case("judge-unknown-engine", args("--judge", "foo:bar"), r"unknown engine 'foo' in 'foo:bar'"),
    Case("judge-opt-without-equals", args("--judge-opt", "dtype"), r"engine option 'dtype' is not KEY=VALUE"),
    Case("judge-opt-unknown", args("--judge-opt", "colour=red"), r"engine 'scripted' takes no option colour"),
    Case("judge-opt-secret", args("--judge-opt", f"api_key={SECRET}"), r"option 'api_key' looks like a secret"),
    # YAML judge spec files: broken, not a mapping, missing, not UTF-8, unknown engine, a secret
    Case("yaml-broken", yaml_judge("engine: [llamacpp\nmodel: x\n"), r"judge\.yaml: not readable YAML"),
    Case("yaml-not-a-mapping", yaml_judge("- llamacpp\n"), r"judge\.yaml: an engine spec file needs 'engine'"),
    Case("yaml-missing", yaml_judge(None), r"judge\.yaml: engine spec file not found"),
    Case("yaml-not-utf8", yaml_judge(b"engine: caf\xe9\nmodel: x\n"), r"judge\.yaml: not readable YAML"),
    Case("yaml-unknown-engine", yaml_judge("engine: gpt\nmodel: x\n"), r"unknown engine 'gpt'"),
    Case(
        "yaml-secret",
        yaml_judge(f"engine: scripted\nmodel: A\noptions:\n  token: {SECRET}\n"),
        r"option 'token' looks like a secret",
    ),
    # images: the folder missing, an image missing, empty, not an image, truncated, a decompression bomb
    Case("images-dir-missing", decapbench_image(_png(8, 8), "no-such-dir"), r"--images-dir .*: no such folder"),
    Case("image-missing", decapbench_image(None), rf"{DECAP_ID}: image missing; --images-dir must hold"),
    Case("image-zero-bytes", decapbench_image(b""), rf"{DECAP_ID}: empty file \(0 bytes\)"),
    Case("image-not-an-image", decapbench_image(b"<html>404</html>"), rf"{DECAP_ID}: not an image"),
    Case("image-truncated-png", decapbench_image(_TRUNCATED_PNG), rf"{DECAP_ID}: unreadable or truncated image"),
    Case("image-decompression-bomb", decapbench_image(_bomb_png()), rf"{DECAP_ID}: too large to decode safely"),
    Case("caparena-image-truncated", caparena_image(_TRUNCATED_PNG), rf"{ARENA_ID}: unreadable or truncated"),
    # benchmark data files: DeCapBench's reference file not JSONL, CapArena's data file missing
    Case("decapbench-data-not-jsonl", data_file("decapbench", "<html>"), r"ref\.json:1: not valid JSON"),
    Case("caparena-data-missing", data_file("caparena", None), r"ref\.json: no such file; pass CapArena-Auto's data"),
    # results folders: from another benchmark, a corrupt manifest, a manifest that is not an object,
    # a score log with a line that is not a score record
    Case("results-of-another-benchmark", results(_other_benchmark_manifest()), r"holds results of benchmark 'decap"),
    Case("manifest-corrupt", results('{"benchmark": "mini", "metr'), r"manifest\.json: unreadable manifest"),
    Case("manifest-not-an-object", results("[1, 2]"), r"manifest\.json: not a capbench manifest \(a JSON list"),
    Case(
        "score-log-not-scores",
        results(json.dumps({"benchmark": "mini"}), '{"id": "moon"}\n'),
        r"captionqa\.jsonl:1: not a capbench score record",
    ),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_no_temporary_files(tmp_path: Path) -> None:
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def _assert_nothing_half_written(results_dir: Path, tmp_path: Path) -> None:
    """No temporary file anywhere; every run folder has a complete manifest and whole score logs."""
    _assert_no_temporary_files(tmp_path)
    for manifest in results_dir.rglob("manifest.json"):
        data = json.loads(manifest.read_text(encoding="utf-8"))
        assert data["status"] == "complete"
        for metric in data["metrics"]:
            log = manifest.parent / f"{metric}.jsonl"
            assert log.read_bytes().endswith(b"\n")
            assert len(log.read_text(encoding="utf-8").splitlines()) == data["metrics"][metric]["samples"]
    for folder in results_dir.glob("*/*"):
        assert (folder / "manifest.json").is_file(), f"{folder} has results but no manifest"


def _invoke(argv: list[str]):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, argv)


@pytest.mark.usefixtures("scripted_cli_engine", "ctx_cli_engine")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path):
    results_dir = tmp_path / "results"
    argv = ["eval", *case.build(tmp_path), "--results-dir", str(results_dir)]
    before = _snapshot(results_dir)
    result = _invoke([*argv, "--json"] if case.error is None else argv)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    assert SECRET not in result.output
    assert result.exit_code == case.code, result.output
    if case.error is not None:
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.output
        assert re.search(case.error, errors[0]), errors[0]
        assert _snapshot(results_dir) == before, "a refused run changed the results folder"
        _assert_no_temporary_files(tmp_path)
    else:
        metric, key, count = case.counted  # type: ignore[misc]
        [run] = json.loads(result.stdout)["runs"]
        assert run["metrics"][metric][key] == count
        _assert_nothing_half_written(results_dir, tmp_path)


def test_the_corpus_covers_twenty_kinds():
    assert len({c.id for c in CASES}) == len(CASES) >= 20


def test_debug_shows_the_traceback_of_a_bad_caption(tmp_path: Path):
    caps = _write(tmp_path, "caps.jsonl", '{"id": "moon", "caption": "a\\u0000b"}\n')
    result = _invoke(["--debug", "eval", "-c", str(caps), "--results-dir", str(tmp_path / "r")])
    assert type(result.exception).__name__ == "InputError"


@pytest.mark.parametrize(
    "manifest",
    ['{"benchmark": "mini", "metr', "[1, 2]", _other_benchmark_manifest()],
    ids=["corrupt", "not-an-object", "another-benchmark"],
)
def test_overwrite_replaces_a_broken_or_foreign_results_folder(tmp_path: Path, scripted_cli_engine, manifest: str):
    """The fix the errors above name works: --overwrite starts the run afresh."""
    argv = ["eval", *results(manifest)(tmp_path), "--results-dir", str(tmp_path / "results"), "--overwrite", "--json"]
    result = _invoke(argv)
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "results" / "mini" / "caps" / "manifest.json").read_text())
    assert written["benchmark"] == "mini" and written["status"] == "complete"
    _assert_nothing_half_written(tmp_path / "results", tmp_path)
