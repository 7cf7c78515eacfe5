"""``wordcount``: how close a caption's length is to its reference caption's (no judge needed).

Per caption, ρ = caption words / reference words and the score is 100 × max(0, 1 − |ρ − target|):
100 at the target ratio, 0 at twice (or zero times) the reference's length. As an RL reward
(``length_match``) it is that score / 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from capbench import Caption, Sample, SampleScore


@dataclass(frozen=True)
class WordCountConfig:
    """The metric's settings (what ``metrics={"wordcount": {...}}`` may set)."""

    target: float = 1.0
    """The ideal caption/reference length ratio."""
    seed: int = 0
    """Unused (the metric is deterministic); capbench passes its seed to every metric that takes one."""


class WordCount:
    """Length match: 100 when a caption has its reference's number of words."""

    # Required: what capbench checks and ranks by.
    name = "wordcount"
    higher_is_better = True
    value_range = (0.0, 100.0)
    needs = frozenset({"reference_caption"})
    judge_roles: tuple[str, ...] = ()  # no judge: capbench loads none for it
    # Optional: how tables, the leaderboard and capbench-rl show and use it.
    Config = WordCountConfig
    title = "Length match"
    description = "how close the caption's word count is to the reference caption's"
    unit = "points (0-100)"
    columns = (("length match", "score"), ("words", "words"), ("ratio", "ratio"))
    note = "100 × max(0, 1 − |words / reference words − target|)"
    rewards = (("length_match", "score", 100.0),)

    def __init__(self, config: WordCountConfig | None = None) -> None:
        self.cfg = config or WordCountConfig()

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def prompt_hashes(self) -> dict[str, str]:
        return {}

    def planned_requests(self, samples: Sequence[Sample], captions: Sequence[Caption]) -> int:
        return 0

    def score(self, samples: Sequence[Sample], captions: Sequence[Caption], judges: Any) -> list[SampleScore]:
        out = []
        for sample, caption in zip(samples, captions, strict=True):
            words, reference = len(caption.text.split()), len(sample.reference_caption.split())
            ratio = words / reference if reference else None
            value = None if ratio is None else 100.0 * max(0.0, 1.0 - abs(ratio - self.cfg.target))
            out.append(
                SampleScore(
                    sample.id,
                    self.name,
                    {"score": value, "words": float(words), "ratio": ratio},
                    unscored=int(value is None),
                )
            )
        return out

    def summarize(self, scores: Sequence[SampleScore]) -> dict[str, Any]:
        scored = [s for s in scores if s.values.get("score") is not None]

        def mean(key: str) -> float | None:
            return sum(s.values[key] for s in scored) / len(scored) if scored else None

        return {"score": mean("score"), "words": mean("words"), "ratio": mean("ratio"), "images": len(scored)}

    def units(self, scores: Sequence[SampleScore]) -> list[tuple[str, str, float, float]]:
        return [
            (s.sample_id, "all", float(s.values["score"]), 1.0) for s in scores if s.values.get("score") is not None
        ]
