"""capbench's own time per caption, per metric, with a judge that answers at once; against a real judge.

Usage: python benchmarks/overhead.py [--sizes 10,100,1000] [--repeats 3] [--real-captions 3] [--profile]
Writes benchmarks/results/overhead.json and benchmarks/results/overhead.md.

- overhead: for each metric and size, a fresh cache file and results folder, then the path
  `capbench eval` takes: ``capbench.prepare`` (not timed), then ``capbench.api.run`` (timed: it
  opens the cache, builds the judge, scores with batch size 8, writes the results and reads them
  back) over a synthetic caption set (copies of capbench-mini's samples with unique ids and
  captions, see ``_instant.synthetic``), the judge ``instant:instant`` (``InstantEngine``,
  registered by ``_instant.register``) behind capbench's SQLite cache. The metrics are built by
  ``capbench.build_metrics`` from ``EvalConfig`` settings (``fact_protocol="official"``, letter
  answers, both arena orders: what `capbench eval` uses with a judge other than the embedded
  one). Seconds per caption at each size (the median of --repeats runs), the ratio 1000/10 of
  seconds per caption, and a least-squares fit ``seconds = fixed + per_caption × captions``
  (the fixed part is per run: cache, manifest, ``git rev-parse``, package versions).
- real judge: the same path with ``llamacpp:smollm2`` on --real-captions captions of CaptionQA
  in loglik mode (the embedded default): seconds per caption, and the engine's own share
  (building the engine is not counted; loading its model, on the first request, is).
  The overhead of CaptionQA-loglik at the largest size, divided by it, is capbench's share.
- --profile: cProfile of the largest size of each metric; the top functions by own time go
  into the JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _instant import register, synthetic  # noqa: E402
from _report import save  # noqa: E402

import capbench  # noqa: E402
from capbench.api import Reporter, run  # noqa: E402

INSTANT = register()
#: Settings of every row, as `capbench eval` takes them for a judge other than the embedded one.
SETTINGS: dict[str, Any] = {"fact_protocol": "official", "answer_mode": "letter", "arena_order": "both"}
#: Row name -> its metric, with the settings that differ from SETTINGS.
METRICS: dict[str, dict[str, dict[str, Any]]] = {
    "captionqa": {"captionqa": {}},
    "captionqa (loglik)": {"captionqa": {"answer_mode": "loglik"}},
    "dcscore": {"dcscore": {}},
    "balcap": {"balcap": {}},
    "caprl": {"caprl": {}},
    "arena": {"arena": {}},
}


def config(name: str, size: int, folder: Path, judge: str = INSTANT) -> capbench.EvalConfig:
    """One row's run: ``size`` synthetic captions, a fresh SQLite cache and results folder in ``folder``."""
    captions = synthetic(size)[1]
    return capbench.EvalConfig(
        benchmark="synthetic",
        benchmark_options={"size": size},
        captions={captions.name: dict(captions.captions)},
        metrics=METRICS[name],
        judge=judge,
        results_dir=folder / "results",
        cache=folder / "cache.sqlite",
        **SETTINGS,
    )


class Timer(Reporter):
    """Counts the seconds spent building judges, so they can be left out."""

    def __init__(self) -> None:
        self.loading_seconds = 0.0

    @contextmanager
    def loading(self, what: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.loading_seconds += time.perf_counter() - start


def one_run(name: str, size: int, tmp: Path, profile: cProfile.Profile | None = None) -> dict:
    """Score ``size`` synthetic captions with one metric in a fresh cache and results folder."""
    plan = capbench.prepare(config(name, size, Path(tempfile.mkdtemp(dir=tmp))))
    if profile is not None:
        profile.enable()
    start, cpu = time.perf_counter(), time.process_time()
    (result,) = run(plan).values()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if profile is not None:
        profile.disable()
    assert len(result.samples) == size and not any(result.unscored.values()), (name, result.unscored)
    return {"seconds": seconds, "cpu": cpu, "judge_calls": result.stats["judge_calls"]}


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares line through (captions, seconds): (fixed seconds, seconds per caption)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def top_functions(profile: cProfile.Profile, count: int = 15) -> list[dict[str, Any]]:
    """The functions with the most own time, as rows for the JSON report."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (file, line, func), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": calls, "own_s": own,
                     "cumulative_s": cumulative})  # fmt: skip
    rows.sort(key=lambda r: -r["own_s"])
    return [{**r, "own_s": round(r["own_s"], 3), "cumulative_s": round(r["cumulative_s"], 3)} for r in rows[:count]]


def real_judge(captions: int, tmp: Path) -> dict[str, Any]:
    """CaptionQA (loglik) on the embedded judge: seconds per caption, all of it and the engine's part."""
    name, judge = "captionqa (loglik)", "llamacpp:smollm2"
    plan = capbench.prepare(config(name, captions, Path(tempfile.mkdtemp(dir=tmp)), judge))
    timer = Timer()
    start = time.perf_counter()
    (result,) = run(plan, timer).values()
    seconds = time.perf_counter() - start - timer.loading_seconds
    return {
        "engine": judge,
        "metric": name,
        "captions": captions,
        "judge_calls": result.stats["judge_calls"],
        "seconds_per_caption": seconds / captions,
        "engine_seconds_per_caption": result.stats["engine_seconds"] / captions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,1000", help="caption counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size (the median counts)")
    parser.add_argument("--metrics", default=",".join(METRICS), help="rows of METRICS to measure")
    parser.add_argument("--real-captions", type=int, default=3, help="captions for the real judge (0: skip)")
    parser.add_argument("--profile", action="store_true", help="profile the largest size of each metric")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "sizes": sizes,
        "repeats": args.repeats,
        "metrics": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in names:  # imports and first-use costs (scipy for arena's summary), not counted
            one_run(name, 2, tmp)
        for name in names:
            row: dict[str, Any] = {"sizes": {}}
            for size in sizes:
                runs = [one_run(name, size, tmp) for _ in range(args.repeats)]
                seconds = statistics.median(r["seconds"] for r in runs)
                cpu = statistics.median(r["cpu"] for r in runs)
                row["sizes"][str(size)] = {
                    "seconds": round(seconds, 4),
                    "seconds_per_caption": seconds / size,
                    "cpu_seconds_per_caption": cpu / size,
                    "judge_calls_per_caption": runs[0]["judge_calls"] / size,
                    "runs": [round(r["seconds"], 4) for r in runs],
                }
                print(f"{name:20s} {size:5d} captions: {seconds / size * 1000:8.3f} ms/caption "
                      f"({cpu / size * 1000:.3f} ms CPU)", flush=True)  # fmt: skip
            per = {int(k): v["seconds_per_caption"] for k, v in row["sizes"].items()}
            row["ratio_largest_smallest"] = per[max(per)] / per[min(per)]
            cpu_per = {int(k): v["cpu_seconds_per_caption"] for k, v in row["sizes"].items()}
            row["cpu_ratio_largest_smallest"] = cpu_per[max(cpu_per)] / cpu_per[min(cpu_per)]
            fixed, slope = fit([(int(k), v["seconds"]) for k, v in row["sizes"].items()])
            row["fit"] = {"fixed_seconds": round(fixed, 4), "seconds_per_caption": slope}
            if args.profile:
                profile = cProfile.Profile()
                one_run(name, max(sizes), tmp, profile)
                row["profile_top"] = top_functions(profile)
            report["metrics"][name] = row
        if args.real_captions:
            report["real_judge"] = real_judge(args.real_captions, tmp)
    save("overhead", report, markdown(report))


def markdown(report: dict[str, Any]) -> str:
    sizes = report["sizes"]
    head = " | ".join(f"{s} captions" for s in sizes)
    lines = [
        "# capbench's own time per caption (a judge that answers at once)",
        "",
        f"Machine: {report['machine']}. Median of {report['repeats']} runs per cell; each run a fresh SQLite "
        "cache file and results folder, through `capbench.api.run` (batch size 8), as `capbench eval` runs. "
        "Seconds per caption: wall time, CPU time of the process in brackets (wall also holds fsync waits and "
        "other processes' use of the 2 cores, so the CPU ratio is the steadier test of linear growth).",
        "",
        f"| metric | requests / caption | {head} | ratio {sizes[-1]}/{sizes[0]} | fit (wall): fixed + per caption |",
        "|---|---|" + "---|" * len(sizes) + "---|---|",
    ]
    for name, row in report["metrics"].items():
        cells = " | ".join(
            f"{row['sizes'][str(s)]['seconds_per_caption'] * 1000:.2f} ms "
            f"({row['sizes'][str(s)]['cpu_seconds_per_caption'] * 1000:.2f})"
            for s in sizes
        )
        calls = row["sizes"][str(sizes[-1])]["judge_calls_per_caption"]
        fixed, slope = row["fit"]["fixed_seconds"] * 1000, row["fit"]["seconds_per_caption"] * 1000
        ratio = f"{row['ratio_largest_smallest']:.2f} ({row['cpu_ratio_largest_smallest']:.2f})"
        lines.append(f"| {name} | {calls:g} | {cells} | {ratio} | {fixed:.0f} ms + {slope:.2f} ms |")
    real = report.get("real_judge")
    if real:
        qa = report["metrics"].get("captionqa (loglik)")
        lines += [
            "",
            f"Real judge: `{real['engine']}`, {real['metric']}, {real['captions']} captions, "
            f"{real['judge_calls']} judge calls: {real['seconds_per_caption']:.2f} s per caption, of which the "
            f"engine {real['engine_seconds_per_caption']:.2f} s.",
        ]
        if qa:
            own = qa["fit"]["seconds_per_caption"]
            lines.append(
                f"capbench's own time for the same metric ({own * 1000:.2f} ms per caption, fitted) is "
                f"{100 * own / real['seconds_per_caption']:.2f}% of the real judge's time per caption."
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
