"""Leaderboard figures (PNG): scores with intervals, score against caption length, per-image heat map.

Figures are drawn on :class:`matplotlib.figure.Figure` objects and rendered by the Agg canvas,
without pyplot: importing this module does not switch a notebook's backend, and nothing is
kept in pyplot's global figure list. Each file is written to a temporary name in its folder,
then renamed, so a reader never sees half a PNG.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from capbench.errors import ConfigError
from capbench.leaderboard import Board, Leaderboard, per_image, sort_metric
from capbench.runs import safe_name

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 150
#: Colours of protocol groups in a mixed column (the first is the colour of an unmixed one).
_GROUP_COLOURS = ("#3b6ea8", "#d9822b", "#5a9e4b", "#a8423b", "#7d5ba6", "#8c6d31")
#: Above this many images, a heat map's columns get no tick labels (they could not be read).
_MAX_IMAGE_LABELS = 60


def bars_size(models: int, metrics: int) -> tuple[float, float]:
    """Return the size in inches of the score bars for ``models`` rows and ``metrics`` panels."""
    return 1.6 + 3.6 * metrics, 1.4 + 0.32 * models


def length_size(metrics: int) -> tuple[float, float]:
    """Return the size in inches of the score-against-length panels."""
    return 0.6 + 4.6 * metrics, 4.4


def heatmap_size(models: int, images: int) -> tuple[float, float]:
    """Return the size in inches of a heat map of ``models`` rows and ``images`` columns."""
    return min(16.0, max(7.0, 2.8 + 0.16 * images)), 3.2 + 0.3 * models


def _axis_label(board: Board, metric: str) -> str:
    """Give the metric's unit (or range) and direction; the panel's title names the metric."""
    info = board.infos[metric]
    low, high = info.value_range
    better = "higher" if info.higher_is_better else "lower"
    return f"{info.unit or f'{low:g} to {high:g}'}, {better} is better"


def _title(board: Board, metric: str) -> str:
    """The metric's title, with its column name where that differs, and the mixed-protocol mark."""
    title = board.infos[metric].title
    named = title if title.lower() == metric.lower() else f"{title} ({metric})"
    return f"{named} † mixed judges/protocols" if metric in board.mixed else named


def _colours(board: Board, metric: str, models: Sequence[str]) -> list[str]:
    """Colour each model by its protocol group in ``metric`` (one colour where the column is not mixed)."""
    letters = board.mixed.get(metric, {})
    return [_GROUP_COLOURS[(ord(letters.get(m, "A")) - ord("A")) % len(_GROUP_COLOURS)] for m in models]


def _group_legend(board: Board, metric: str, ax: Axes) -> None:
    """Name the colours of a mixed column's protocol groups (the table's footnote says what each is)."""
    from matplotlib.patches import Patch

    letters = sorted(set(board.mixed.get(metric, {}).values()))
    if letters:
        colours = _colours(board, metric, [next(m for m, g in board.mixed[metric].items() if g == x) for x in letters])
        handles = [Patch(color=c, label=f"group {x}") for x, c in zip(letters, colours, strict=True)]
        ax.legend(handles=handles, fontsize=7, loc="lower right", title="judge/protocol", title_fontsize=7)


def score_bars(board: Board, path: Path) -> Path:
    """Draw one panel per metric: each model's score with its 95% interval, best at the top."""
    from matplotlib.figure import Figure

    metrics = board.metrics
    fig = Figure(figsize=bars_size(len(board.frame), len(metrics)), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        frame = board.frame.dropna(subset=[metric])
        frame = frame.sort_values(metric, ascending=board.infos[metric].higher_is_better, kind="stable")
        values = frame[metric].to_numpy()
        errors = [values - frame[f"{metric}_low"].to_numpy(), frame[f"{metric}_high"].to_numpy() - values]
        models = [str(m) for m in frame["model"]]
        bars = ax.barh(
            [_label(board, m) for m in models],
            values,
            xerr=errors,
            color=_colours(board, metric, models),
            capsize=2.5,
            height=0.7,
        )
        for bar, model in zip(bars, models, strict=True):
            if model == board.baseline:
                bar.set(hatch="///", edgecolor="white")
        for y, (value, low, high) in enumerate(
            zip(values, frame[f"{metric}_low"], frame[f"{metric}_high"], strict=True)
        ):
            # Label beyond the interval's outer end, so a negative bar's label does not sit on the bar.
            at, dx, ha = (low, -4, "right") if value < 0 else (high, 4, "left")
            ax.annotate(
                f"{value:.1f}", (at, y), xytext=(dx, 0), textcoords="offset points", va="center", ha=ha, fontsize=7
            )
        ax.set_xlim(*_limits(board, metric, frame))
        ax.set_xlabel(_axis_label(board, metric))
        ax.set_title(plain(_title(board, metric)), fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="y", labelsize=8)
        _group_legend(board, metric, ax)
    hatched = f" (hatched: baseline {board.baseline})" if board.baseline else ""
    title = f"{board.benchmark}: scores with 95% bootstrap intervals{hatched}{_other_images(board)}"
    fig.suptitle(plain(title), fontsize=12)
    return _save(fig, path)


def _limits(board: Board, metric: str, frame: pd.DataFrame) -> tuple[float, float]:
    """Return x limits: the metric's range, widened if an interval pokes out of it."""
    low, high = board.infos[metric].value_range
    return min([low, *frame[f"{metric}_low"].dropna()]), max([high, *frame[f"{metric}_high"].dropna()])


def length_scatter(board: Board, path: Path) -> Path:
    """Draw one panel per metric: each model's score against its mean caption length, labelled."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=length_size(len(board.metrics)), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(board.metrics), squeeze=False, sharex=True)[0]
    for ax, metric in zip(axes, board.metrics, strict=True):
        frame = board.frame.dropna(subset=[metric, "words"])
        values = frame[metric].to_numpy()
        errors = [values - frame[f"{metric}_low"].to_numpy(), frame[f"{metric}_high"].to_numpy() - values]
        models = [str(m) for m in frame["model"]]
        ax.errorbar(frame["words"], values, yerr=errors, fmt="none", ecolor="#b0b0b0", elinewidth=1, capsize=2)
        ax.scatter(frame["words"], values, c=_colours(board, metric, models), s=28, zorder=3)
        for index, (model, x, y) in enumerate(zip(models, frame["words"], values, strict=True)):
            # Alternate the offsets so that neighbouring labels overlap less.
            offset = (4, 5 if index % 2 == 0 else -9)
            ax.annotate(_label(board, model), (x, y), xytext=offset, textcoords="offset points", fontsize=7)
        ax.margins(x=0.12, y=0.08)
        ax.set_xlabel("mean caption length (words)")
        ax.set_ylabel(_axis_label(board, metric))
        ax.set_title(plain(_title(board, metric)), fontsize=11)
        ax.grid(alpha=0.3)
        _group_legend(board, metric, ax)
    title = f"{board.benchmark}: score against caption length (bars: 95% intervals){_other_images(board)}"
    fig.suptitle(plain(title), fontsize=12)
    return _save(fig, path)


def image_heatmap(board: Board, metric: str, path: Path) -> Path:
    """Draw models × images for one metric: best model on top, images sorted from easy to hard."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if metric not in board.metrics:
        raise ConfigError(f"--heatmap-metric {metric!r}: not on {board.benchmark}; choose from {board.metrics}")
    info = board.infos[metric]
    order = [str(m) for m in board.frame.sort_values(metric, ascending=not info.higher_is_better)["model"]]
    grid = per_image(board, metric).reindex([m for m in order if m in board.runs])
    grid = grid[grid.mean(axis=0).sort_values(ascending=not info.higher_is_better).index]
    low, high = info.value_range
    # A range that spans zero (arena: wins minus losses) reads best on a diverging map centred there.
    diverging = low < 0 < high
    cmap = colormaps["RdBu" if diverging else "viridis"].with_extremes(bad="#d0d0d0")
    fig = Figure(figsize=heatmap_size(len(grid), grid.shape[1]), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    norm = Normalize(low, high)
    if grid.shape[1]:
        ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    else:
        ax.text(0.5, 0.5, "no image has a usable score", transform=ax.transAxes, ha="center", va="center")
        ax.set_ylim(len(grid) - 0.5, -0.5)
    ax.set_yticks(range(len(grid)), [_label(board, m) for m in grid.index], fontsize=8)
    if grid.shape[1] <= _MAX_IMAGE_LABELS:
        ax.set_xticks(range(grid.shape[1]), [plain(c) for c in grid.columns], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
    missing = ", grey: not scored" if grid.isna().any(axis=None) else ""
    ax.set_xlabel(f"images (n={grid.shape[1]}), sorted by mean score across models{missing}")
    ax.set_ylabel("model")
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=plain(f"{info.title}: {info.unit or f'{low:g} to {high:g}'}"))
    ax.set_title(plain(f"{board.benchmark}: {_title(board, metric)} per image (best model on top)"), fontsize=12)
    return _save(fig, path)


def write_figures(board: Board, out_dir: Path, heatmap_metric: str | None = None) -> list[Path]:
    """Draw the three figures of one board into ``out_dir``; return their paths."""
    if not board.metrics:
        return []
    stem = safe_name(board.benchmark)
    metric = heatmap_metric or sort_metric(board) or board.metrics[0]
    return [
        score_bars(board, Path(out_dir) / f"{stem}-scores.png"),
        length_scatter(board, Path(out_dir) / f"{stem}-length.png"),
        image_heatmap(board, metric, Path(out_dir) / f"{stem}-heatmap-{safe_name(metric)}.png"),
    ]


def write_all_figures(board_set: Leaderboard, out_dir: Path, heatmap_metric: str | None = None) -> list[Path]:
    """Draw every board's figures into ``out_dir``; a board without ``heatmap_metric`` maps another (a warning).

    Each board's figures are also noted in ``board_set.figures``, for the HTML page to embed.
    """
    files: list[Path] = []
    for board in board_set.boards:
        metric = heatmap_metric if heatmap_metric in board.metrics else None
        if heatmap_metric and metric is None:
            board_set.warnings.append(
                f"{board.benchmark}: no {heatmap_metric} results; its heat map shows another metric"
            )
        drawn = write_figures(board, out_dir, metric)
        board_set.figures[board.benchmark] = drawn
        files += drawn
    return files


def _label(board: Board, model: object) -> str:
    """A model's name as a figure shows it: drawn literally, with ‡ if it scored other images than the rest."""
    flagged = board.coverage.get(str(model)) is not None and board.coverage[str(model)].ids != board.reference
    return plain(model) + (" ‡" if flagged else "")


def _other_images(board: Board) -> str:
    return "\n‡: scored other images than the rest (see the table's note); not comparable" if board.flagged() else ""


def plain(text: object) -> str:
    """Return ``text`` as matplotlib draws it literally: a ``$`` would start mathtext (and a bad one raises)."""
    return str(text).replace("$", r"\$")


def _save(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to PNG at ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=DPI)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
