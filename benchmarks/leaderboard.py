"""Leaderboard figures: `capbench leaderboard` end to end on synthetic results of many models.

Usage: python benchmarks/leaderboard.py [--models 20] [--images 600] [--repeats 3] [--keep DIR]
Writes benchmarks/results/leaderboard.json and benchmarks/results/leaderboard.md.

The results are real results folders (captions.jsonl, <metric>.jsonl and manifest.json, written
with capbench.runs) of 20 models × 600 images × 4 metrics: captionqa, dcscore, balcap and arena
(CapArena-Auto: one unit per image and baseline). Records have the shapes and about the sizes
the metrics write (question records, fact lists, pair judgments with replies), so loading costs
what it would on real runs. The command is timed as a user runs it (a fresh process: start-up,
loading, bootstrap, tables, figures), with and without --baseline; its --json report gives the
time of each phase, and the bootstrap's share is that phase over the whole.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _report import save

from capbench import __version__
from capbench.hashing import content_hash
from capbench.leaderboard import bootstrap, paired_difference
from capbench.metrics import build_metric
from capbench.metrics.base import headline
from capbench.records import SampleScore
from capbench.runs import RunDir

HERE = Path(__file__).resolve().parent
BENCHMARK = "synthetic"
METRICS = ("captionqa", "dcscore", "balcap", "arena")
DOMAINS = ("natural", "science", "document")
#: CapArena-Auto's three fixed baselines, with a made-up strength on the models' quality scale.
BASELINES = {"GPT-4o-0806": 8.0, "CogVLM2-llama3-chat-19B": -2.0, "MiniCPM-V2.6-8B": -8.0}
QUESTIONS = 14
FACTS = 20
WORDS = ("a", "the", "red", "small", "dog", "sits", "near", "wooden", "table", "light", "falls", "onto", "floor")
TEXT_JUDGE = {"backend": "openai", "model": "gpt-4o-2024-08-06", "base_url": "https://api.openai.com/v1"}
VISION_JUDGE = {"backend": "vllm", "model": "Qwen/Qwen2.5-VL-72B-Instruct", "revision": "main"}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def captionqa_record(rng: np.random.Generator, image: str, index: int, ability: float) -> SampleScore:
    """Return a CaptionQA record: per-question options, answers and scores, as the metric writes them."""
    domain = DOMAINS[index % len(DOMAINS)]
    rows = []
    for q in range(QUESTIONS):
        draw = rng.random()
        status = "correct" if draw < _sigmoid(ability / 10) else "cannot_answer" if draw < 0.9 else "wrong"
        score = {"correct": 1.0, "cannot_answer": 0.3, "wrong": 0.0}[status]
        options = [f"option {k} of question {q}" for k in range(4)] + ["Cannot be determined from the caption"]
        rows.append(
            {"question_id": f"{image}-q{q:02d}", "category": "attribute", "domain": domain, "options": options,
             "answer": "A", "reply": "A", "chosen": "A", "status": status, "score": score}
        )  # fmt: skip
    scores = [r["score"] for r in rows]
    values = {
        "score": 100 * sum(scores) / len(scores),
        "accuracy": 100 * sum(r["status"] == "correct" for r in rows) / len(rows),
        "cannot_answer_rate": 100 * sum(r["status"] == "cannot_answer" for r in rows) / len(rows),
    }
    return SampleScore(image, "captionqa", values, {"domain": domain, "questions": rows})


def _facts(rng: np.random.Generator, precision: float) -> dict[str, Any]:
    facts = [{"fact": f"The {WORDS[k % len(WORDS)]} is here.", "object": f"obj_{k}", "descriptive": k % 5 != 0}
             for k in range(FACTS)]  # fmt: skip
    verdicts = [{"fact": k, "verified": bool(rng.random() < precision), "votes": [1, 1, 0]} for k in range(FACTS)]
    matches = [{"reference": k, "matched": bool(rng.random() < 0.5)} for k in range(FACTS // 2)]
    return {"facts": facts, "verify_mode": "image", "verdicts": verdicts, "matches": matches, "failures": []}


def fact_records(rng: np.random.Generator, image: str, ability: float) -> tuple[SampleScore, SampleScore]:
    """Return a DCScore and a BalCapRL record; about 1 in 200 images failed (no usable judgment)."""
    if rng.random() < 0.005:
        failed = {"error": "judge reply unreadable", "failures": [{"stage": "verify"}], "verify_mode": "image"}
        return (
            SampleScore(image, "dcscore", dict.fromkeys(("precision", "recall", "f1", "dcscore")), failed, 1),
            SampleScore(image, "balcap", dict.fromkeys(("precision", "recall", "linguistic", "b_capscore")), failed, 1),
        )
    precision = float(np.clip(rng.normal(0.75 + ability / 100, 0.1), 0.05, 1))
    recall = float(np.clip(rng.normal(0.45 + ability / 80, 0.1), 0.05, 1))
    linguistic = float(np.clip(rng.normal(0.8, 0.08), 0.05, 1))
    f1 = 2 * precision * recall / (precision + recall)
    details = {**_facts(rng, precision), "error": None, "references": FACTS // 2}
    dc = {"precision": precision, "recall": recall, "f1": f1, "f1_descriptive": f1, "dcscore": 100 * f1}
    b_cap = 100 * 3 / (1 / precision + 1 / recall + 1 / linguistic)
    bal = {"precision": precision, "recall": recall, "linguistic": linguistic, "b_capscore": b_cap}
    ratings = {"clarity": 4, "fluency": 5, "coherence": 4}
    balcap = SampleScore(image, "balcap", bal, {**details, "ratings": ratings})
    return SampleScore(image, "dcscore", dc, details), balcap


def arena_record(rng: np.random.Generator, image: str, ability: float, words: int) -> SampleScore:
    """Return an arena record: one pair per baseline, both orders judged, as CapArena-Auto writes it."""
    pairs, outcomes = [], []
    for baseline, strength in BASELINES.items():
        p_win = _sigmoid((ability - strength) / 8)
        outcome = float(rng.choice([1.0, 0.5, 0.0], p=[0.8 * p_win, 0.2, 0.8 * (1 - p_win)]))
        reply = {"verdict": "1", "outcome": outcome, "reply": "Caption 1 is better", "reason": "more detail"}
        orders = [{"first": first, **reply} for first in ("a", "b")]
        pairs.append({"baseline": baseline, "orders": orders, "outcome": outcome, "consistent": True})
        outcomes.append(outcome)
    values = {
        "score": float(np.mean([100 * (2 * o - 1) for o in outcomes])),
        "wins": float(sum(o == 1.0 for o in outcomes)),
        "losses": float(sum(o == 0.0 for o in outcomes)),
        "ties": float(sum(o == 0.5 for o in outcomes)),
    }
    details = {"pairs": pairs, "judge_mode": "image", "caption_words": words}
    return SampleScore(image, "arena", values, details)


def write_model(root: Path, model: str, ability: float, images: int, rng: np.random.Generator) -> None:
    """Write one model's results folder: captions, four score logs and the manifest."""
    run = RunDir(root, BENCHMARK, model)
    ids = [f"img{i:04d}" for i in range(images)]
    lengths = np.clip(rng.normal(60 + 2.5 * ability, 15, images), 5, None).astype(int)
    captions = {i: " ".join(rng.choice(WORDS, size=n)) for i, n in zip(ids, lengths, strict=True)}
    run.write_captions(captions)
    records: dict[str, list[SampleScore]] = {m: [] for m in METRICS}
    for index, image in enumerate(ids):
        difficulty = rng.normal(0, 6)
        records["captionqa"].append(captionqa_record(rng, image, index, ability + difficulty))
        for record in fact_records(rng, image, ability + difficulty):
            records[record.metric].append(record)
        records["arena"].append(arena_record(rng, image, ability + difficulty, int(lengths[index])))
    entries = {}
    for name, scores in records.items():
        run.scores(name).append(scores)
        config = {"benchmark": BENCHMARK, "metric": name, "config": {"seed": 0}, "prompts": {f"{name}.user": "0" * 64}}
        config["judges"] = {"text": TEXT_JUDGE, "vision": VISION_JUDGE}
        score = headline(build_metric(name).units(scores))
        entries[name] = {**config, "config_hash": content_hash(config), "samples": images, "summary": {"score": score}}
    source = {"name": model, "source": f"{model}.jsonl", "sha256": content_hash(captions), "samples": images}
    run.write_manifest(
        {"capbench_version": __version__, "benchmark": BENCHMARK, "caption_set": source, "command": ["benchmark"],
         "judges": {"text": TEXT_JUDGE, "vision": VISION_JUDGE}, "metrics": entries, "sessions": [],
         "status": "complete"}
    )  # fmt: skip


def generate(root: Path, models: int, images: int, seed: int = 0) -> dict[str, Any]:
    """Write every model's folder; return the scale and how long generating took."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    abilities = np.linspace(-12, 12, models)
    for index, ability in enumerate(rng.permutation(abilities)):
        write_model(root, f"model-{index:02d}", float(ability), images, rng)
    size = sum(p.stat().st_size for p in root.rglob("*.jsonl"))
    return {"models": models, "images": images, "metrics": list(METRICS), "jsonl_megabytes": round(size / 1e6, 1),
            "generate_seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


def time_command(root: Path, out: Path, extra: list[str], repeats: int) -> dict[str, Any]:
    """Run `capbench leaderboard --json` in fresh processes; return wall times and the phases of the median run."""
    argv = [sys.executable, "-m", "capbench.cli", "leaderboard", str(root), "--out", str(out), "--json", *extra]
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        report = json.loads(done.stdout)
        runs.append((time.perf_counter() - started, report["timings"], len(report["files"])))
    wall, phases, files = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    return {
        "command": " ".join(["capbench leaderboard RESULTS --json", *extra]),
        "wall_seconds": round(wall, 2),
        "wall_seconds_all": [round(r[0], 2) for r in runs],
        "phases_seconds": phases,
        "bootstrap_share_of_wall": round(phases["bootstrap"] / wall, 3),
        "files": files,
    }


def time_bootstrap_alone(root: Path, rounds: int = 1000) -> dict[str, Any]:
    """Time the bootstrap by itself, in this process: every (model, metric) interval and paired difference."""
    from capbench.leaderboard import load_results

    results = load_results(root)
    units = [(run.model, m, result.units) for run in results.runs for m, result in run.metrics.items()]
    base = {m: r.units for m, r in results.runs[0].metrics.items()}
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _, _, u in units:
        bootstrap(u, rng, rounds)
    intervals = time.perf_counter() - started
    started = time.perf_counter()
    for _, metric, u in units[len(base) :]:
        paired_difference(u, base[metric], rng, rounds)
    paired = time.perf_counter() - started
    return {"intervals": len(units), "intervals_seconds": round(intervals, 3),
            "paired_differences": len(units) - len(base), "paired_seconds": round(paired, 3),
            "units": sum(len(u) for _, _, u in units)}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    """Render the report as the Markdown table under benchmarks/results/."""
    scale = report["scale"]
    rows = ["| run | wall (s) | load | bootstrap | tables | figures | bootstrap share |", "|---" * 7 + "|"]
    for name, run in report["runs"].items():
        p = run["phases_seconds"]
        rows.append(
            f"| {name} | {run['wall_seconds']} | {p['load']:.2f} | {p['bootstrap']:.2f} | {p['tables']:.2f} | "
            f"{p['figures']:.2f} | {run['bootstrap_share_of_wall']:.0%} |"
        )
    alone = report["bootstrap_alone"]
    return (
        f"# Leaderboard figures\n\nMachine: {report['machine']}. Scale: {scale['models']} models × "
        f"{scale['images']} images × {len(scale['metrics'])} metrics ({', '.join(scale['metrics'])}), "
        f"{scale['jsonl_megabytes']} MB of score files; 1000 bootstrap rounds; median of {report['repeats']} "
        "fresh processes.\n\n" + "\n".join(rows) + "\n\n"
        "wall: the whole command as a user runs it (interpreter start-up and imports included); bootstrap: "
        "building the tables' numbers (intervals, paired differences, the data frame).\n\n"
        f"The bootstrap alone, in one process: {alone['intervals']} intervals over {alone['units']} units in "
        f"{alone['intervals_seconds']} s; {alone['paired_differences']} paired differences in "
        f"{alone['paired_seconds']} s.\n"
    )


def main() -> None:
    """Generate the synthetic results, time the command, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the synthetic results here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "results"
        scale = generate(root, args.models, args.images)
        report = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
            "scale": scale,
            "repeats": args.repeats,
            "runs": {
                "plain": time_command(root, Path(tmp) / "out", [], args.repeats),
                "--baseline model-00": time_command(root, Path(tmp) / "out", ["--baseline", "model-00"], args.repeats),
            },
            "bootstrap_alone": time_bootstrap_alone(root),
        }
    save("leaderboard", report, markdown(report))


if __name__ == "__main__":
    main()
