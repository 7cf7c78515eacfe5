"""Send evaluation results where people already watch them: Weights & Biases and TensorBoard.

``capbench eval --report-to wandb,tensorboard`` sends each caption set's summary (every number
of every metric's summary, as scalars) and its per-sample table (the image as a thumbnail, the
caption, the reference and each metric's per-sample values). capbench-rl's checkpoint evaluation
sends a few sampled rows of each checkpoint through the same functions, with the trackers TRL
logs to. The trackers' packages are imported only here, and only when asked for.
"""

from __future__ import annotations

import html
import importlib.util
import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from capbench.errors import CapbenchError, ConfigError
from capbench.records import Sample

#: The trackers, by the name ``--report-to`` takes: (module imported, pip package that provides it).
TRACKERS = {"wandb": ("wandb", "wandb"), "tensorboard": ("tensorboard", "tensorboard")}
#: Longer side of the image thumbnails sent, in pixels.
THUMBNAIL = 256
#: Most images a TensorBoard run gets per table (its event file holds every image; W&B stores each as a file).
TENSORBOARD_IMAGES = 64


@dataclass(frozen=True)
class SampleRow:
    """One row of a per-sample table: the image's path, the caption, the reference and the sample's values."""

    sample_id: str
    image: str | None
    caption: str
    reference: str = ""
    #: Each metric's per-sample numbers as ``<metric>/<key>`` (None where the judge gave nothing usable).
    values: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleRow:
        """Build from :meth:`to_dict`'s output."""
        return cls(
            str(data["sample_id"]), data.get("image"), str(data.get("caption", "")), str(data.get("reference", "")),
            dict(data.get("values") or {}),
        )  # fmt: skip


def parse_trackers(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The tracker names of ``--report-to`` (``wandb,tensorboard``), each checked as installed.

    Raises:
        ConfigError: an unknown name, or a tracker whose package is not installed (the error names it).
    """
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"--report-to {', '.join(unknown)}: unknown tracker; choose from {', '.join(TRACKERS)}")
    for name in names:
        module, package = TRACKERS[name]
        for needed, pip in ((module, package), ("PIL", "pillow")):
            if importlib.util.find_spec(needed) is None:
                raise ConfigError(f"--report-to {name} needs the {pip} package: pip install {pip}")
    return names


def choose(ids: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` of ``ids``, drawn with ``seed`` and kept in their order: the same draw for the same ids."""
    if count >= len(ids):
        return list(ids)
    picked = sorted(random.Random(seed).sample(range(len(ids)), count))
    return [ids[i] for i in picked]


def sample_rows(result: Any, samples: Iterable[Sample], ids: Sequence[str] | None = None) -> list[SampleRow]:
    """The per-sample rows of one caption set's results (a :class:`capbench.SetResult`), in its order.

    Args:
        result: The caption set's results: its records give the captions and per-sample values.
        samples: The benchmark's samples, for the images and references.
        ids: Only these samples (those without a record are left out); None: every record.
    """
    by_id = {s.id: s for s in samples}
    records = {r.sample_id: r for r in result.samples}
    rows = []
    for sample_id in ids if ids is not None else list(records):
        record = records.get(sample_id)
        if record is None:
            continue
        sample = by_id.get(sample_id)
        values: dict[str, float | None] = {}
        for metric, score in record.scores.items():
            for key, value in score.values.items():
                if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                    values[f"{metric}/{key}"] = None if value is None else float(value)
        image = sample.image.path if sample is not None and sample.image is not None else None
        reference = sample.reference_caption if sample is not None else ""
        rows.append(SampleRow(sample_id, image, record.caption, reference, values))
    return rows


def with_images(samples: Sequence[Sample], benchmark: str, options: Mapping[str, Any]) -> Sequence[Sample]:
    """``samples`` with their images: a benchmark loaded without them (no judge looked) is loaded again with them.

    Where the images cannot be had (a benchmark that needs an images folder it was not given), the
    samples are returned as they are, with a warning: the tables then go without images.
    """
    if all(s.image is not None for s in samples):
        return samples
    from capbench.data import load_benchmark

    try:
        return load_benchmark(benchmark, with_images=True, **dict(options)).samples
    except CapbenchError as exc:
        warnings.warn(f"the trackers get no images of {benchmark} ({exc})", UserWarning, stacklevel=2)
        return samples


def scalars(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of a summary, nested mappings flattened into ``a/b/c`` names (lists and text left out)."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def thumbnail(path: str | None) -> Any:
    """The image at ``path`` as an RGB PIL image at most :data:`THUMBNAIL` pixels a side, or None if unreadable."""
    if not path:
        return None
    from capbench.images import load_rgb

    try:
        image = load_rgb(path)
    except (OSError, ValueError):  # an image moved or damaged since scoring: the row goes without it
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def wandb_table(wandb: Any, rows: Sequence[SampleRow], extra: Mapping[str, Any] | None = None) -> Any:
    """A ``wandb.Table`` of ``rows``: extra columns (e.g. the step), sample id, image, caption, reference, values."""
    extra = dict(extra or {})
    keys = list(dict.fromkeys(k for row in rows for k in row.values))
    table = wandb.Table(columns=[*extra, "sample_id", "image", "caption", "reference", *keys])
    for row in rows:
        image = thumbnail(row.image)
        shown = wandb.Image(image, caption=row.sample_id) if image is not None else None
        table.add_data(*extra.values(), row.sample_id, shown, row.caption, row.reference,
                       *(row.values.get(k) for k in keys))  # fmt: skip
    return table


def markdown_table(rows: Sequence[SampleRow]) -> str:
    """The rows as a Markdown table (TensorBoard's text tab renders it); cell text escaped."""
    keys = list(dict.fromkeys(k for row in rows for k in row.values))
    lines = ["| " + " | ".join(["sample", "caption", "reference", *keys]) + " |", "|" + "---|" * (3 + len(keys))]
    for row in rows:
        cells = [_cell(row.sample_id), _cell(row.caption), _cell(row.reference)]
        lines.append("| " + " | ".join([*cells, *(_number(row.values.get(k)) for k in keys)]) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe in one Markdown table cell: HTML escaped, pipes and backslashes escaped, on one line."""
    return html.escape(" ".join(text.split())).replace("\\", "\\\\").replace("|", "\\|")


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def tensorboard_samples(writer: Any, tag: str, rows: Sequence[SampleRow], step: int) -> None:
    """Write ``rows`` to a TensorBoard writer: a text table under ``tag``, images under ``tag/<sample id>``.

    ``writer`` is a :class:`EventWriter` or torch's ``SummaryWriter`` (what transformers'
    TensorBoardCallback holds): both take ``add_text`` and ``add_image``.
    """
    import numpy as np

    writer.add_text(tag, markdown_table(rows), step)
    for row in rows[:TENSORBOARD_IMAGES]:
        image = thumbnail(row.image)
        if image is not None:
            writer.add_image(f"{tag}/{row.sample_id}", np.asarray(image), step, dataformats="HWC")


class EventWriter:
    """A TensorBoard event file writer on the tensorboard package alone (no torch, no TensorFlow).

    Takes the calls of torch's ``SummaryWriter`` that capbench makes: ``add_scalar``, ``add_text``,
    ``add_image`` (HWC uint8 arrays), ``flush`` and ``close``.
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        Path(logdir).mkdir(parents=True, exist_ok=True)
        self.logdir = str(logdir)
        self._file = EventFileWriter(self.logdir)

    def _add(self, value: Any, step: int) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        event = event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value]))
        self._file.add_event(event)

    def add_scalar(self, tag: str, value: float, step: int = 0) -> None:
        """Record a number."""
        from tensorboard.compat.proto import summary_pb2

        self._add(summary_pb2.Summary.Value(tag=tag, simple_value=float(value)), step)

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        """Record Markdown text (TensorBoard's text plugin)."""
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

        metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
        )
        self._add(summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor), step)

    def add_image(self, tag: str, image: Any, step: int = 0, dataformats: str = "HWC") -> None:
        """Record an RGB image given as an HWC uint8 array, PNG-encoded."""
        import io

        from PIL import Image
        from tensorboard.compat.proto import summary_pb2

        if dataformats != "HWC":
            raise ValueError(f"EventWriter takes HWC images, not {dataformats}")
        picture = Image.fromarray(image)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        encoded = summary_pb2.Summary.Image(
            height=picture.height, width=picture.width, colorspace=3, encoded_image_string=buffer.getvalue()
        )
        self._add(summary_pb2.Summary.Value(tag=tag, image=encoded), step)

    def flush(self) -> None:
        """Write what is queued to disk."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._file.close()


# ---------------------------------------------------------------- capbench eval --report-to


def report_evaluation(
    evaluation: Any, samples: Sequence[Sample], trackers: Sequence[str], directory: str | os.PathLike[str],
    name: str | None = None,
) -> list[str]:  # fmt: skip
    """Send each caption set's summary and per-sample table to ``trackers``; return where each went.

    One tracker run per caption set, named ``name`` (with several sets, ``name/<set>``; without a
    name, the set's name). TensorBoard writes to ``<directory>/tensorboard/<benchmark>/<run>/``;
    W&B keeps its files under ``<directory>`` (``WANDB_MODE=offline`` keeps the run there, for
    ``wandb sync`` later).

    Raises:
        CapbenchError: a tracker could not start a run (e.g. W&B is not logged in).
    """
    where: list[str] = []
    samples = with_images(samples, evaluation.benchmark, evaluation.config.benchmark_options)
    for set_name, result in evaluation.sets.items():
        run = set_name if name is None else (name if len(evaluation.sets) == 1 else f"{name}/{set_name}")
        rows = sample_rows(result, samples)
        numbers = scalars(result.summary)
        if "tensorboard" in trackers:
            where.append(_to_tensorboard(Path(directory), evaluation.benchmark, run, numbers, result, rows))
        if "wandb" in trackers:
            where.append(_to_wandb(Path(directory), evaluation, run, numbers, rows))
    return where


def _to_tensorboard(
    directory: Path, benchmark: str, run: str, numbers: Mapping[str, float], result: Any, rows: Sequence[SampleRow]
) -> str:
    from capbench.runs import safe_name

    logdir = directory / "tensorboard" / safe_name(benchmark) / "/".join(safe_name(p) for p in run.split("/"))
    writer = EventWriter(logdir)
    try:
        for tag, value in numbers.items():
            writer.add_scalar(tag, value, 0)
        headline = [f"| {_cell(m)} | {_number(result.headline(m))} | {len(result.samples)} |" for m in result.summary]
        writer.add_text("summary", "| metric | score | samples |\n|---|---|---|\n" + "\n".join(headline), 0)
        tensorboard_samples(writer, "samples", rows, 0)
    finally:
        writer.close()
    return f"tensorboard: {logdir}"


def _to_wandb(
    directory: Path, evaluation: Any, run: str, numbers: Mapping[str, float], rows: Sequence[SampleRow]
) -> str:
    import wandb

    directory.mkdir(parents=True, exist_ok=True)
    config = {"benchmark": evaluation.benchmark, **evaluation.config.to_dict(), "judges": evaluation.judges}
    try:
        started = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "capbench", name=run, group=evaluation.benchmark,
            job_type="eval", dir=str(directory), config=config, reinit="create_new",
        )  # fmt: skip
    except Exception as exc:  # wandb raises its own errors (not logged in, no network): one line, with the fix
        message = " ".join(str(exc).split())
        raise CapbenchError(
            f"wandb could not start a run ({type(exc).__name__}: {message}); the results are saved: run `wandb login` "
            "(or set WANDB_MODE=offline) and rerun the same command, which resumes them without judging again"
        ) from None
    try:
        started.log({**numbers, "samples": wandb_table(wandb, rows)})
        where = f"wandb: {started.name} ({started.url or started.dir})"
    finally:
        started.finish()
    return where
