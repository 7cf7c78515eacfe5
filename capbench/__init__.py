"""capbench: measure image captions, and train captioners with the same measurements as rewards.

The library behind the ``capbench`` command::

    import capbench

    results = capbench.evaluate(
        benchmark="mini",
        captions={"mine": "my_captions.jsonl"},
        metrics=["captionqa", "balcap"],
        judge="openai:Qwen/Qwen2.5-72B-Instruct",
        judge_options={"base_url": "http://localhost:8000/v1"},
    )
    results["mine"].summary["balcap"]["score"]      # b-CapScore
    results["mine"].samples[0].scores["balcap"]     # one sample's record

Names are imported on first use, so ``import capbench`` (and ``capbench --help``) stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> module that defines it.
_EXPORTS = {
    "EvalConfig": "capbench.config",
    "evaluate": "capbench.api",
    "prepare": "capbench.api",
    "Evaluation": "capbench.api",
    "SetResult": "capbench.api",
    "SampleRecord": "capbench.api",
    "Reporter": "capbench.api",
    "read_run": "capbench.api",
    "read_results": "capbench.api",
    "merge_shards": "capbench.api",
    "catalogue": "capbench.api",
    "build_judges": "capbench.api",
    "build_metrics": "capbench.api",
    "cached_judge": "capbench.api",
    "leaderboard_report": "capbench.leaderboard",
    "export_results": "capbench.export",
    "compare_judges": "capbench.judge_compare",
    "load_benchmark": "capbench.data",
    "Benchmark": "capbench.data",
    "build_metric": "capbench.metrics",
    "describe": "capbench.metrics",
    "reward_table": "capbench.metrics",
    "build_engine": "capbench.engines",
    "MetricInfo": "capbench.records",
    "Sample": "capbench.records",
    "ImageRef": "capbench.records",
    "Question": "capbench.records",
    "Caption": "capbench.records",
    "CaptionSet": "capbench.records",
    "SampleScore": "capbench.records",
    "CapbenchError": "capbench.errors",
    "ConfigError": "capbench.errors",
    "InputError": "capbench.errors",
}

__all__ = [
    "Benchmark",
    "CapbenchError",
    "Caption",
    "CaptionSet",
    "ConfigError",
    "EvalConfig",
    "Evaluation",
    "ImageRef",
    "InputError",
    "MetricInfo",
    "Question",
    "Reporter",
    "Sample",
    "SampleRecord",
    "SampleScore",
    "SetResult",
    "__version__",
    "build_engine",
    "build_judges",
    "build_metric",
    "build_metrics",
    "cached_judge",
    "catalogue",
    "compare_judges",
    "describe",
    "evaluate",
    "export_results",
    "leaderboard_report",
    "load_benchmark",
    "merge_shards",
    "prepare",
    "read_results",
    "read_run",
    "reward_table",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from capbench.api import (
        Evaluation,
        Reporter,
        SampleRecord,
        SetResult,
        build_judges,
        build_metrics,
        cached_judge,
        catalogue,
        evaluate,
        merge_shards,
        prepare,
        read_results,
        read_run,
    )
    from capbench.config import EvalConfig
    from capbench.data import Benchmark, load_benchmark
    from capbench.engines import build_engine
    from capbench.errors import CapbenchError, ConfigError, InputError
    from capbench.export import export_results
    from capbench.judge_compare import compare_judges
    from capbench.leaderboard import leaderboard_report
    from capbench.metrics import build_metric, describe, reward_table
    from capbench.records import Caption, CaptionSet, ImageRef, MetricInfo, Question, Sample, SampleScore


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'capbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
