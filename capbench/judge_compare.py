"""Compare two judges on the same captions: how far a replacement judge's numbers are from a retired one's.

Both sides are results folders of ``capbench eval`` over the same benchmark and caption sets, one
scored by the old judge (or re-scored from a cassette of its replies, ``--judge replay:FILE``), one
by the new. Per metric scored on both sides, over the (caption set, sample) pairs both judges scored
with the same caption:

- **samples**: Pearson and Spearman correlation of the per-sample scores (a sample's score is the
  weighted mean of its headline units, see ``capbench.metrics.base.headline``); for pairwise
  verdict metrics (``arena``) also raw agreement and Cohen's κ of the verdicts (win, tie, loss per
  baseline);
- **ranking**: Spearman and Kendall τ-b of the caption sets' headlines (ties as ties: average ranks,
  τ-b), undefined when fewer than 3 sets are shared or one side's headlines are all equal;
- **calibration**: per set the headline under each judge and their difference, the mean difference
  (new − old), and a least-squares line new ≈ a·old + b through the per-sample scores.

Intervals are 95% percentile bootstraps over images: each round draws the images with replacement
(one seeded ``numpy.random.default_rng(seed)`` stream per metric), and every statistic is recomputed
on the drawn images for both judges at once, so differences are paired. docs/judges.md explains
each number.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from capbench.errors import InputError
from capbench.judge_stats import (
    all_equal,
    correlation_undefined,
    kappa_of_tables,
    rank_correlation,
    spearman_kendall,
    weighted_correlations,
)
from capbench.records import read_caption_file
from capbench.results import Run, load_results

#: Metrics whose units are pairwise verdicts: value → verdict of the caption set against the stratum's baseline.
VERDICT_METRICS: dict[str, dict[float, str]] = {"arena": {100.0: "win", 0.0: "tie", -100.0: "loss"}}
#: Fewest caption sets a ranking correlation is reported for (two sets give only ±1).
MIN_SETS = 3
SIDES = ("old", "new")
#: Bootstrap rounds whose per-sample resamples are held at once (rounds × pairs floats each).
_BLOCK = 64


def _num(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _interval(draws: Sequence[float]) -> dict[str, Any]:
    """The 2.5/97.5 percentiles of the defined draws, and how many draws were undefined."""
    array = np.asarray(draws, dtype=float)
    finite = array[np.isfinite(array)]
    if not len(finite):
        return {"low": None, "high": None, "undefined_draws": len(array)}
    low, high = np.percentile(finite, [2.5, 97.5])
    return {"low": float(low), "high": float(high), "undefined_draws": int(len(array) - len(finite))}


def _with_interval(name: str, point: float, draws: Sequence[float], defined: bool = True) -> dict[str, Any]:
    """``{name, name_low, name_high}`` (all None when the point estimate is undefined)."""
    if not defined or not math.isfinite(point):
        return {name: None, f"{name}_low": None, f"{name}_high": None}
    band = _interval(draws)
    return {name: float(point), f"{name}_low": band["low"], f"{name}_high": band["high"]}


# ---------------------------------------------------------------- one metric's paired scores


@dataclass
class Paired:
    """One metric's units under both judges, on the cells (caption set, image, stratum) both scored.

    ``wv`` and ``w`` are (2 sides, sets, images, strata) arrays of weighted value sums and weights;
    a cell only one judge scored is zero on both sides.
    """

    metric: str
    sets: list[str]
    images: list[str]
    strata: list[str]
    wv: np.ndarray
    w: np.ndarray

    def sample_values(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-sample scores of both judges over the (set, image) pairs both scored, and each pair's image index."""
        total = self.w.sum(axis=-1)
        scored = np.nonzero(total[0] > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = self.wv.sum(axis=-1) / total
        return values[0][scored], values[1][scored], scored[1]

    def headlines(self, counts: np.ndarray) -> np.ndarray:
        """Headlines (rounds, 2, sets) when image i is drawn ``counts[r, i]`` times; NaN where a set has no units."""
        shape = (len(counts), 2, len(self.sets), len(self.strata))
        num, den = (
            (counts @ a.transpose(2, 0, 1, 3).reshape(len(self.images), -1)).reshape(shape) for a in (self.wv, self.w)
        )
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a set without units in a draw: NaN says so
            return np.nanmean(np.where(den > 0, num / den, np.nan), axis=-1)

    def verdicts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Verdict codes (0 loss, 1 tie, 2 win) of both judges per shared cell and its image; None if not verdicts."""
        cells = np.nonzero(self.w[0] > 0)
        if not np.all(self.w[(slice(None), *cells)] == 1.0):
            return None
        codes = np.sign(self.wv[(slice(None), *cells)]).astype(int) + 1
        return codes[0], codes[1], cells[1]


def pair_runs(metric: str, old: Mapping[str, Run], new: Mapping[str, Run], skip: Mapping[str, set[str]]) -> Paired:
    """Pair one metric's units of the caption sets both sides scored, leaving out the ids in ``skip[set]``."""
    sets = sorted(s for s in old if s in new and metric in old[s].metrics and metric in new[s].metrics)
    cells: list[dict[tuple[str, str, str], list[float]]] = []
    for side in (old, new):
        sums: dict[tuple[str, str, str], list[float]] = {}
        for name in sets:
            for sample, stratum, value, weight in side[name].metrics[metric].units:
                if sample in skip.get(name, ()):
                    continue
                acc = sums.setdefault((name, sample, stratum), [0.0, 0.0])
                acc[0] += weight * value
                acc[1] += weight
        cells.append(sums)
    shared = [k for k in cells[0] if k in cells[1] and cells[0][k][1] > 0 and cells[1][k][1] > 0]
    images = sorted({k[1] for k in shared})
    strata = sorted({k[2] for k in shared})
    wv = np.zeros((2, len(sets), len(images), len(strata)))
    w = np.zeros_like(wv)
    set_at, image_at, stratum_at = ({v: i for i, v in enumerate(x)} for x in (sets, images, strata))
    for key in shared:
        where = (set_at[key[0]], image_at[key[1]], stratum_at[key[2]])
        for side, sums in enumerate(cells):
            wv[(side, *where)], w[(side, *where)] = sums[key]
    return Paired(metric, sets, images, strata, wv, w)


# ---------------------------------------------------------------- the statistics of one metric


def compare_metric(paired: Paired, rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Sample-level agreement, ranking agreement and calibration shift of one metric's paired scores."""
    n_images = len(paired.images)
    draws = np.random.default_rng(seed).integers(0, n_images, size=(rounds, n_images))
    counts = np.zeros((rounds, n_images))
    np.add.at(counts, (np.arange(rounds)[:, None], draws), 1.0)
    point = paired.headlines(np.ones((1, n_images)))[0]
    boot = paired.headlines(counts)
    return {
        "sets": len(paired.sets),
        "images": n_images,
        "samples": _sample_level(paired, counts),
        "verdicts": _verdict_level(paired, counts),
        "ranking": _ranking(paired.sets, point, boot),
        "calibration": _calibration(paired, point, boot),
    }


def _sample_level(paired: Paired, counts: np.ndarray) -> dict[str, Any]:
    x, y, image = paired.sample_values()
    why = correlation_undefined(x, y, ("old judge's sample score", "new judge's sample score"))
    out: dict[str, Any] = {"n": len(x), "undefined": why}
    point = weighted_correlations(x, y, np.ones((1, len(x))))
    draws: tuple[list[float], list[float]] = ([], [])
    for block in range(0, len(counts) if why is None else 0, _BLOCK):
        pearson, spearman = weighted_correlations(x, y, counts[block : block + _BLOCK, image])
        draws[0].extend(pearson)
        draws[1].extend(spearman)
    for name, estimate, values in zip(("pearson", "spearman"), point, draws, strict=True):
        out.update(_with_interval(name, float(estimate[0]), values, why is None))
    return out


def _verdict_level(paired: Paired, counts: np.ndarray) -> dict[str, Any] | None:
    labels = VERDICT_METRICS.get(paired.metric)
    codes = paired.verdicts() if labels is not None else None
    if codes is None:
        return None
    names = [labels[-100.0], labels[0.0], labels[100.0]]
    per_image = np.zeros((len(paired.images), 9))
    np.add.at(per_image, (codes[2], codes[0] * 3 + codes[1]), 1.0)
    table = per_image.sum(axis=0)
    (agreement,), (kappa,) = kappa_of_tables(table[None, :])
    why = None
    if not len(codes[0]):
        why = "no verdict was given by both judges"
    elif not math.isfinite(kappa):
        why = f"both judges said {names[int(codes[0][0])]!r} every time: κ is 0/0"
    boot_agreement, boot_kappa = kappa_of_tables(counts @ per_image)
    out: dict[str, Any] = {"n": len(codes[0]), "undefined": why}
    out.update(_with_interval("agreement", 100 * agreement, 100 * boot_agreement, bool(len(codes[0]))))
    out.update(_with_interval("kappa", kappa, boot_kappa))
    out["confusion"] = {names[i]: {names[j]: int(table[i * 3 + j]) for j in range(3)} for i in range(3)}
    return out


def _ranking(sets: list[str], point: np.ndarray, boot: np.ndarray) -> dict[str, Any]:
    labels = ("old judge's headline", "new judge's headline")
    result = rank_correlation(
        dict(zip(sets, point[0], strict=True)), dict(zip(sets, point[1], strict=True)), labels, MIN_SETS
    )
    if result["undefined"] and result["shared"] < MIN_SETS:
        result["undefined"] = f"{result['shared']} caption set(s) in both; ranking agreement needs at least {MIN_SETS}"
    spearman, kendall = [], []
    if result["undefined"] is None:
        for heads in boot:
            keep = np.isfinite(heads[0]) & np.isfinite(heads[1])
            x, y = heads[0][keep], heads[1][keep]
            rho, tau = spearman_kendall(x, y) if len(x) >= MIN_SETS else (math.nan, math.nan)
            spearman.append(rho)
            kendall.append(tau)
    defined = result["undefined"] is None
    out: dict[str, Any] = {"sets": result["shared"], "undefined": result["undefined"]}
    for name, values in (("spearman", spearman), ("kendall", kendall)):
        out.update(_with_interval(name, math.nan if result[name] is None else result[name], values, defined))
    out["undefined_draws"] = _interval(spearman)["undefined_draws"] if defined else None
    return out


def _calibration(paired: Paired, point: np.ndarray, boot: np.ndarray) -> dict[str, Any]:
    diffs = boot[:, 1] - boot[:, 0]
    rows = []
    for index, name in enumerate(paired.sets):
        old, new = float(point[0, index]), float(point[1, index])
        row = {"model": name, "old": _num(old), "new": _num(new), "images": int((paired.w[0, index].sum(-1) > 0).sum())}
        row.update(_with_interval("diff", new - old, diffs[:, index]))
        rows.append(row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        shift = float(np.nanmean(point[1] - point[0])) if len(paired.sets) else math.nan
        shifts = np.nanmean(diffs, axis=1) if len(paired.sets) else []
    out: dict[str, Any] = {
        "mean_old": _num(float(np.nanmean(point[0]))) if len(paired.sets) else None,
        "mean_new": _num(float(np.nanmean(point[1]))) if len(paired.sets) else None,
    }
    out.update(_with_interval("shift", shift, shifts))
    out["fit"] = _fit(*paired.sample_values()[:2])
    out["sets"] = rows
    return out


def _fit(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Least squares new ≈ slope·old + intercept through the per-sample scores."""
    if len(x) < 3 or all_equal(x):
        why = "fewer than 3 samples" if len(x) < 3 else f"every old judge's sample score is {x[0]:g}: no slope"
        return {"slope": None, "intercept": None, "r": None, "slope_stderr": None, "n": len(x), "undefined": why}
    line = stats.linregress(x, y)
    return {
        "slope": float(line.slope),
        "intercept": float(line.intercept),
        "r": None if all_equal(y) else float(line.rvalue),
        "slope_stderr": _num(float(line.stderr)),
        "n": len(x),
        "undefined": None,
    }


# ---------------------------------------------------------------- reading two results folders


def compare_judges(
    old: str | Path, new: str | Path, benchmark: str | None = None, rounds: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Compare the judge of results folder ``old`` with that of ``new`` on the captions both scored.

    Args:
        old: Results of the old judge: a results folder, one benchmark's folder in it, or one run folder.
        new: Results of the new judge, the same way.
        benchmark: The benchmark to compare (needed only when both hold several).
        rounds: Bootstrap rounds of the intervals.
        seed: Seed of the bootstrap.

    Returns:
        The report: ``benchmark``, ``old`` and ``new`` (path, judges), ``bootstrap``, ``seed``,
        ``metrics`` (per metric: ``samples``, ``verdicts``, ``ranking``, ``calibration``) and
        ``warnings`` (partial overlap, captions that differ, judges mixed within a side).

    Raises:
        InputError: either side holds no results, the two hold different benchmarks, or no caption
            set, metric or sample is scored on both sides.
    """
    if rounds < 1:
        raise InputError(f"--bootstrap is {rounds}; use at least 1 round (1000 is the default)")
    notes: list[str] = []
    sides = [_side_runs(Path(path), label, notes) for path, label in ((old, "OLD"), (new, "NEW"))]
    chosen = _benchmark(sides, Path(old), Path(new), benchmark)
    runs = [{r.model: r for r in side if r.benchmark == chosen} for side in sides]
    names = _shared_sets(runs, notes)
    skip = _different_captions(names, runs, notes)
    metrics = list(dict.fromkeys(m for n in names for m in runs[0][n].metrics if m in runs[1][n].metrics))
    if not metrics:
        raise InputError(
            f"no metric was scored on both sides for the shared caption sets: OLD has "
            f"{_listing(_metric_order(runs[0], names))}, NEW has {_listing(_metric_order(runs[1], names))}; "
            "score the same metrics (-m) with both judges"
        )
    report: dict[str, Any] = {"benchmark": chosen, "bootstrap": rounds, "seed": seed, "metrics": {}}
    for label, path in zip(SIDES, (old, new), strict=True):
        report[label] = {"path": str(path), "judges": {}}
    for metric in metrics:
        paired = pair_runs(metric, runs[0], runs[1], skip)
        for label, side in zip(SIDES, runs, strict=True):
            report[label]["judges"][metric] = _judges_of(metric, [side[n] for n in paired.sets], label, notes)
        if _overlap_note(metric, paired, runs, notes):
            report["metrics"][metric] = _described(metric, runs, paired) | compare_metric(paired, rounds, seed)
    if not report["metrics"]:
        raise InputError(
            f"no sample was scored by both judges (metrics {_listing(metrics)}, caption sets {_listing(names)}); "
            "score the same captions of the same images with both judges"
        )
    report["warnings"] = notes
    return report


def _shared_sets(runs: list[dict[str, Run]], notes: list[str]) -> list[str]:
    """The caption sets both sides hold (an error if none), noting those only one side holds."""
    names = [n for n in runs[0] if n in runs[1]]
    if not names:
        raise InputError(
            f"no caption set is in both: OLD has {_listing(runs[0])}, NEW has {_listing(runs[1])}; score the same "
            "caption files (same names) with both judges"
        )
    for label, here, there in (("OLD", runs[0], runs[1]), ("NEW", runs[1], runs[0])):
        only = [n for n in here if n not in there]
        if only:
            notes.append(f"caption set(s) only in {label}: {_listing(only)}; left out")
    return names


def _described(metric: str, runs: list[dict[str, Run]], paired: Paired) -> dict[str, Any]:
    """What the metric declares (from OLD), and its title."""
    info = runs[0][paired.sets[0]].metrics[metric].info
    return {"title": info.title, "higher_is_better": info.higher_is_better, "value_range": list(info.value_range)}


def _side_runs(path: Path, label: str, notes: list[str]) -> list[Run]:
    """The runs of one side: a results folder, a benchmark's folder in one, or a single run folder."""
    if (path / "manifest.json").is_file():
        root, depth = path.parent.parent, 0
    elif path.is_dir() and any(path.glob("*/manifest.json")):
        root, depth = path.parent, 1
    else:
        root, depth = path, 2
    results = load_results(root)
    wanted = path.resolve()
    runs = [r for r in results.runs if depth == 2 or (r.path.resolve().parent if depth else r.path.resolve()) == wanted]
    notes.extend(f"{label}: {w}" for w in results.warnings if depth == 2 or str(path) in w)
    if not runs:
        raise InputError(f"{path}: no results in it; pass the folder `capbench eval --results-dir` wrote to")
    return runs


def _benchmark(sides: list[list[Run]], old: Path, new: Path, wanted: str | None) -> str:
    """The one benchmark both sides hold (``wanted`` if given), or an error saying what to pass."""
    held = [sorted({r.benchmark for r in side}) for side in sides]
    if wanted is not None:
        for label, path, benchmarks in (("OLD", old, held[0]), ("NEW", new, held[1])):
            if wanted not in benchmarks:
                have = _listing(benchmarks)
                raise InputError(f"{label} ({path}) has no results of benchmark {wanted!r}, only {have}")
        return wanted
    shared = [b for b in held[0] if b in held[1]]
    if not shared:
        raise InputError(
            f"OLD ({old}) holds results of benchmark {_listing(held[0])}, NEW ({new}) of {_listing(held[1])}: judges "
            "can only be compared on the same benchmark; score it with both judges (capbench eval -b BENCHMARK)"
        )
    if len(shared) > 1:
        raise InputError(f"both sides hold results of benchmarks {_listing(shared)}; pick one with --benchmark")
    return shared[0]


def _listing(names: Any) -> str:
    names = list(names)
    return ", ".join(map(str, names)) if names else "none"


def _metric_order(runs: Mapping[str, Run], names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(m for n in names for m in runs[n].metrics))


def _captions(run: Run) -> dict[str, str] | None:
    path = run.path / "captions.jsonl"
    try:
        return dict(read_caption_file(path).captions) if path.is_file() and path.stat().st_size else None
    except InputError:
        return None


def _different_captions(names: Sequence[str], runs: list[dict[str, Run]], notes: list[str]) -> dict[str, set[str]]:
    """Per caption set, the samples whose scored caption differs between the sides (left out, with a note)."""
    skip: dict[str, set[str]] = {}
    for name in names:
        old, new = _captions(runs[0][name]), _captions(runs[1][name])
        if old is None or new is None:
            notes.append(f"caption set {name}: no readable captions.jsonl on one side, so it is not checked that "
                         "both judges scored the same captions")  # fmt: skip
            continue
        differ = {i for i in old if i in new and old[i] != new[i]}
        if differ:
            skip[name] = differ
            notes.append(
                f"caption set {name}: {len(differ)} sample(s) have different captions in OLD and NEW "
                f"(e.g. {sorted(differ)[0]}); left out: score the same caption file with both judges"
            )
    return skip


def _overlap_note(metric: str, paired: Paired, runs: list[dict[str, Run]], notes: list[str]) -> bool:
    """Note partial overlap (pairs each side scored, pairs both did) and the same judge on both sides.

    Returns:
        Whether any sample was scored by both judges.
    """
    scored = [{(n, u[0]) for n in paired.sets for u in side[n].metrics[metric].units} for side in runs]
    both = int((paired.w[0].sum(-1) > 0).sum())
    if not both:
        notes.append(f"{metric}: no sample was scored by both judges; left out")
        return False
    if both < len(scored[0]) or both < len(scored[1]):
        notes.append(
            f"{metric}: partial overlap: {both} (caption set, sample) pair(s) scored by both judges, of "
            f"{len(scored[0])} scored by OLD and {len(scored[1])} by NEW; only the {both} are compared"
        )
    if len({tuple(side[n].metrics[metric].protocol for n in paired.sets) for side in runs}) == 1:
        notes.append(f"{metric}: OLD and NEW were scored by the same judge with the same settings; the comparison "
                     "shows only run-to-run differences")  # fmt: skip
    return True


def _judges_of(metric: str, runs: Sequence[Run], label: str, notes: list[str]) -> list[dict[str, Any]]:
    """The distinct judge fingerprints (by role) a side used for ``metric``, noting when it mixes several."""
    found: list[dict[str, Any]] = []
    for run in runs:
        judges = run.metrics[metric].judges
        if judges not in found:
            found.append(judges)
    if len(found) > 1:
        notes.append(f"{label}'s {metric} was scored by {len(found)} different judges across caption sets; "
                     "the comparison mixes them: rescore so that one judge scores every set")  # fmt: skip
    return found


def judge_name(judges: Mapping[str, Any]) -> str:
    """A short name of a judge fingerprint by role, e.g. ``openai:gpt-4o-2024-05-13``."""
    parts = []
    for role, fingerprint in sorted(judges.items()):
        model = fingerprint.get("model", "?")
        if fingerprint.get("backend") == "replay" and isinstance(fingerprint.get("of"), dict):
            model = f"{fingerprint['of'].get('model', model)} (replayed)"
        parts.append(f"{role} {fingerprint.get('backend', '?')}:{model}")
    return ", ".join(parts) or "?"
