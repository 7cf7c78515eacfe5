"""What ``capbench arena`` (rank many caption sets) and ``capbench agreement`` do once their options are parsed."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from capbench.api import build_judges, caption_sets, load_benchmark_of, resolve_answer_mode
from capbench.cli_eval import _options, judge_progress
from capbench.config import EvalConfig
from capbench.engines import DEFAULT_JUDGE
from capbench.engines.cache import CachedEngine
from capbench.errors import ConfigError
from capbench.evaluation import judge_usage
from capbench.metrics.arena import ArenaConfig, PairJudge
from capbench.runs import atomic_write_text, write_jsonl

#: --answer-mode words (eval's vocabulary, and 'generate', the older name) -> the arena's answer modes.
_ANSWER_MODES = {"letter": "generate", "generate": "generate", "loglik": "loglik"}


def arena_config(opts: Mapping[str, Any]) -> EvalConfig:
    """The library settings of ``capbench arena``'s benchmark, caption sets and judges."""
    loader = {k: opts[k] for k in ("images_dir", "data_file") if opts.get(k) is not None}
    return EvalConfig(
        benchmark=opts.get("benchmark") or "mini",
        benchmark_options=loader,
        captions=list(opts.get("caption_files") or ()),
        example_captions=bool(opts.get("example_captions")),
        judge=opts.get("judge") or DEFAULT_JUDGE,
        judge_options=_options(opts, "judge"),
        vision_judge=opts.get("vision_judge"),
        vision_judge_options=_options(opts, "vision_judge"),
        cache=not opts.get("no_cache"),
        record_judge=opts.get("record_judge"),
        seed=opts["seed"],
        results_dir=opts["results_dir"],
        metrics=[],
    )


def _pair_judge(opts: Mapping[str, Any], config: EvalConfig) -> tuple[PairJudge, dict[str, CachedEngine], str]:
    spec = config.judge
    arena = ArenaConfig(
        order=opts["order"],
        seed=opts["seed"],
        answer_mode=_ANSWER_MODES[resolve_answer_mode(opts["answer_mode"], spec)],
        prompt_dir=str(opts["prompt_dir"]) if opts.get("prompt_dir") else None,
    )
    return PairJudge(arena), build_judges(config), spec


def run_arena(opts: Mapping[str, Any]) -> None:
    """Run ``capbench arena``: battles between caption sets, then rankings with intervals."""
    from capbench.tournament import Tournament, plan, rank

    config = arena_config(opts)
    benchmark = load_benchmark_of(config)
    _check_set_names(opts, benchmark.example_captions)
    sets = caption_sets(config, benchmark)
    pairs, judges, spec = _pair_judge(opts, config)
    tournament = Tournament(benchmark, sets, judges, pairs, opts["results_dir"])
    matches = plan(benchmark, sets, opts.get("budget"), opts["seed"], opts.get("limit"))
    with judge_progress(Console(stderr=True), opts["as_json"]) as progress:
        battles = tournament.run(matches, opts["batch_size"], opts["overwrite"], progress)
    report = {"benchmark": benchmark.name, "judge": spec, "order": pairs.cfg.order, **rank(battles, opts["rounds"])}
    report["judge_usage"] = judge_usage(judges)
    atomic_write_text(tournament.folder / "rankings.json", json.dumps(report, indent=2) + "\n")
    if opts["as_json"]:
        click.echo(json.dumps(report, indent=2))
        return
    _print_rankings(report, tournament.folder)


def _check_set_names(opts: Mapping[str, Any], examples: Mapping[str, Any]) -> None:
    """Refuse a caption file given twice, or two sets of one name: arena names each set after its file."""
    entries = [(Path(p).stem, Path(p), str(p)) for p in opts["caption_files"]]
    if opts.get("example_captions"):
        entries += [(name, Path(path), f"the benchmark's example set {name!r}") for name, path in examples.items()]
    seen: dict[str, tuple[Path, str]] = {}
    for name, path, label in entries:
        if name in seen:
            other, other_label = seen[name]
            if path.resolve() == other.resolve():
                also = "" if label == other_label else f" (as {other_label} too)"
                raise ConfigError(f"{label} is entered twice{also}; enter each caption set once")
            raise ConfigError(
                f"two caption sets are named {name!r} ({other_label} and {label}); arena names each set after its "
                "file, so copy or rename one of the files"
            )
        seen[name] = (path, label)


def _print_rankings(report: Mapping[str, Any], folder: Path) -> None:
    console = Console()
    elo = {r["model"]: r for r in report["elo"]}
    table = Table(title=f"Arena on {report['benchmark']} ({report['battles']} battles)", title_justify="left")
    for label in ("#", "caption set", "Bradley–Terry", "95% interval", "Elo (median)", "95% interval", "W-L-T"):
        table.add_column(label, justify="left" if label == "caption set" else "right")
    for place, bt in enumerate(report["bradley_terry"], start=1):
        e = elo[bt["model"]]
        table.add_row(
            str(place), bt["model"], f"{bt['rating']:.0f}", f"{bt['low']:.0f} – {bt['high']:.0f}",
            f"{e['rating']:.0f}", f"{e['low']:.0f} – {e['high']:.0f}", f"{bt['wins']}-{bt['losses']}-{bt['ties']}",
        )  # fmt: skip
    consistency = report["consistency"]
    table.caption = (
        f"judge {report['judge']} ({report['order']} order{'s' if report['order'] == 'both' else ''}); "
        f"{report['failed']} battle(s) without a verdict left out"
        + ("" if consistency is None else f"; verdicts that survived the order swap: {consistency:.1f}%")
    )
    console.print(table)
    console.print(f"battles and rankings: {folder}")


def run_agreement(opts: Mapping[str, Any]) -> None:
    """Run ``capbench agreement``: judge human battles and compare with the humans' verdicts."""
    from capbench.agreement import caption_agreement, judge_battles, model_agreement, read_annotations

    rows = read_annotations(opts["annotations"])
    if opts.get("limit"):
        rows = rows[: opts["limit"]]
    pairs, judges, spec = _pair_judge(opts, arena_config(opts))
    with judge_progress(Console(stderr=True), opts["as_json"]) as progress:
        judged = judge_battles(rows, pairs, judges, opts.get("images_dir"), progress)
    report: dict[str, Any] = {"annotations": str(opts["annotations"]), "judge": spec, "order": pairs.cfg.order}
    report["caption_level"] = caption_agreement(judged)
    report["model_level"] = model_agreement(judged, opts["rounds"]) if _models(judged) >= 2 else None
    report["judge_usage"] = judge_usage(judges)
    out = Path(opts["out"] or Path(opts["results_dir"]) / "agreement" / Path(opts["annotations"]).stem)
    write_jsonl(out / "judgments.jsonl", judged)
    atomic_write_text(out / "agreement.json", json.dumps(report, indent=2) + "\n")
    if opts["as_json"]:
        click.echo(json.dumps(report, indent=2))
        return
    _print_agreement(report, out)


def _models(judged: Sequence[Mapping[str, Any]]) -> int:
    return len({j[k] for j in judged if j["judge"] is not None for k in ("source1", "source2")})


def _print_agreement(report: Mapping[str, Any], out: Path) -> None:
    console = Console()
    level = report["caption_level"]
    table = Table(title="Caption-level agreement with humans (ties count)", title_justify="left")
    table.add_column("level")
    table.add_column("battles", justify="right")
    table.add_column("agreement %", justify="right")

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    for name, row in level["levels"].items():
        table.add_row(name, str(row["battles"]), pct(row["agreement"]))
    table.add_row("all battles", str(level["battles"]), pct(level["agreement"]), style="bold")
    table.caption = (
        f"judge {report['judge']}; {level['failed']} battle(s) without a verdict left out; "
        f"judge ties {level['judge_ties']}, human ties {level['human_ties']}"
    )
    console.print(table)
    model = report["model_level"]
    if model is not None and model["undefined"] is not None:
        console.print(
            f"Model-level ({model['models']} models, bootstrap Elo): Spearman —, Kendall τ-b — "
            f"(undefined: {model['undefined']})",
            highlight=False,
        )
    elif model is not None:
        console.print(
            f"Model-level ({model['models']} models, bootstrap Elo): Spearman {model['spearman']:.3f}, "
            f"Kendall τ-b {model['kendall']:.3f}"
        )
    console.print(f"judgments and report: {out}")
