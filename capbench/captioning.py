"""Caption generation: the model under test describes every image, and the captions are kept.

Generation is a stage of its own, before judging: captions go to
``<results>/<benchmark>/<name>/generated.jsonl`` (appended and flushed per batch, so a killed
run resumes where it stopped) beside ``generation.json``, which records the model, its
engine fingerprint, the prompt and the sampling settings. Switching the judge never
regenerates captions (``--overwrite`` replaces scores, not captions); changing a generation
setting is refused unless ``--regenerate`` asks for fresh captions. The file is a caption set
like any other (``--captions`` reads it). A shard (``--shard I/N``) captions only its part of the
images, in its shard folder, and ``generation.json`` says which part (``capbench merge``
combines the shards' captions).

Prompts: ``default`` is "Describe this image in detail." (CaptionQA's prompt, used for every
benchmark); ``paraphrases`` draws, per image and reproducibly from the seed, one of several
wordings of the same request, as CapArena does to keep a model from being tuned to one
prompt; any other text is used as the prompt itself. An item with several views is
introduced with how many there are, as CaptionQA does.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from capbench.engines.base import ImagePart, Message, Request, Response, Sampling, TextPart
from capbench.errors import ConfigError, InputError
from capbench.hashing import content_hash
from capbench.records import CaptionSet, Sample
from capbench.runs import JsonlLog, RunLock, atomic_write_text

DEFAULT_PROMPT = "Describe this image in detail."
#: Our own wordings of a request for a detailed description (``--caption-prompt paraphrases``).
PARAPHRASES = (
    "Describe this image in detail.",
    "Write a detailed description of this picture.",
    "Give a thorough account of everything you can see in this image.",
    "Describe the contents of this photo as completely and accurately as you can.",
    "Provide a detailed caption for this image.",
    "What does this image show? Describe it in detail.",
)


@dataclass(frozen=True)
class CaptionConfig:
    """How captions are generated; every field is recorded and checked on resume."""

    prompt: str = "default"
    """'default', 'paraphrases', or the prompt text itself."""
    max_tokens: int = 1024
    """Most tokens a caption may have (explicit: never the model's own default)."""
    temperature: float = 0.0
    """Sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    seed: int = 0
    """Seed of sampling and of the paraphrase draw."""

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ConfigError("--caption-prompt is empty; give 'default', 'paraphrases' or a prompt text")
        if self.max_tokens < 1:
            raise ConfigError(f"--caption-max-tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--caption-temperature must be >= 0, got {self.temperature}")

    def prompt_for(self, sample: Sample) -> str:
        """The instruction for ``sample``: fixed, or a paraphrase drawn from (seed, sample id)."""
        if self.prompt == "default":
            text = DEFAULT_PROMPT
        elif self.prompt == "paraphrases":
            text = random.Random(f"{self.seed}:{sample.id}").choice(PARAPHRASES)
        else:
            text = self.prompt
        views = len(sample.images)
        return f"You are viewing {views} related images. {text}" if views > 1 else text

    def request(self, sample: Sample) -> Request:
        """The captioning request of one sample: its images, then the instruction."""
        if not sample.images:
            raise InputError(f"sample {sample.id!r} has no image to caption; pass the benchmark's images")
        parts = (*(ImagePart(i) for i in sample.images), TextPart(self.prompt_for(sample)))
        sampling = Sampling(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return Request((Message("user", parts),), sampling)


@dataclass
class GenerationReport:
    """What one generation stage did."""

    caption_set: CaptionSet
    path: Path
    generated: int
    reused: int
    failed: dict[str, str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.caption_set.name,
            "path": str(self.path),
            "captions": len(self.caption_set.captions),
            "generated": self.generated,
            "reused": self.reused,
            "failed": dict(self.failed),
            "seconds": round(self.seconds, 3),
        }


class Captioner:
    """Generate the captions of one model on one benchmark, batch by batch, resumable."""

    def __init__(self, engine: Any, model: Mapping[str, Any], config: CaptionConfig, batch_size: int = 16) -> None:
        self.engine = engine
        self.model = dict(model)
        self.config = config
        self.batch_size = batch_size

    def settings(self) -> dict[str, Any]:
        """What the captions depend on: the model's engine fingerprint and the generation config."""
        return {"engine": self.engine.fingerprint(), "config": asdict(self.config)}

    def generate(
        self,
        samples: Sequence[Sample],
        folder: Path,
        name: str,
        overwrite: bool = False,
        on_batch: Callable[[int], None] | None = None,
        shard: Mapping[str, Any] | None = None,
    ) -> GenerationReport:
        """Caption every sample that has no caption yet in ``folder``; return the caption set.

        ``shard`` (which part of which images a shard captions) is recorded in ``generation.json``.
        """
        with RunLock(folder):  # one writer per folder, shared with the scoring run that follows
            return self._generate(samples, folder, name, overwrite, on_batch, shard)

    def _generate(
        self,
        samples: Sequence[Sample],
        folder: Path,
        name: str,
        overwrite: bool,
        on_batch: Callable[[int], None] | None,
        shard: Mapping[str, Any] | None,
    ) -> GenerationReport:
        start = time.perf_counter()
        log, manifest_path = JsonlLog(folder / "generated.jsonl"), folder / "generation.json"
        if overwrite:
            log.reset()
        done = self._resume(log, manifest_path)
        self._write_manifest(manifest_path, name, "running", shard=shard)
        todo = [s for s in samples if s.id not in done]
        failed: dict[str, str] = {}
        for offset in range(0, len(todo), self.batch_size):
            batch = todo[offset : offset + self.batch_size]
            responses = self.engine.run([self.config.request(s) for s in batch])
            rows = []
            for sample, response in zip(batch, responses, strict=True):
                problem = _problem(response)
                if problem:
                    failed[sample.id] = problem
                    continue
                rows.append(_row(sample, self.config.prompt_for(sample), response))
            log.append_rows(rows)
            done.update((r["id"], r["caption"]) for r in rows)
            if on_batch is not None:
                on_batch(len(batch))
        self._write_manifest(manifest_path, name, "failed" if failed else "complete", failed, shard)
        captions = {s.id: done[s.id] for s in samples if s.id in done}
        reused = len(samples) - len(todo)
        return GenerationReport(
            CaptionSet(name, captions, str(log.path)),
            log.path,
            generated=len(todo) - len(failed),
            reused=reused,
            failed=failed,
            seconds=time.perf_counter() - start,
        )

    def _resume(self, log: JsonlLog, manifest_path: Path) -> dict[str, str]:
        """Return the captions already generated, after checking they were made the same way."""
        if not log.path.exists():
            return {}
        if manifest_path.exists():
            previous = json.loads(manifest_path.read_text(encoding="utf-8")).get("settings")
            if previous is not None and content_hash(previous) != content_hash(self.settings()):
                raise ConfigError(
                    f"{log.path} holds captions made with other settings ({_difference(previous, self.settings())}); "
                    "pass --regenerate to generate them again, or --name to keep both"
                )
        return {row["id"]: row["caption"] for _, row in log.rows()}

    def _write_manifest(
        self,
        path: Path,
        name: str,
        status: str,
        failed: Mapping[str, str] | None = None,
        shard: Mapping[str, Any] | None = None,
    ) -> None:
        manifest: dict[str, Any] = {
            "caption_set": name,
            "model": self.model,
            "settings": self.settings(),
            "status": status,
            "failed": dict(failed or {}),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if shard is not None:
            manifest["shard"] = dict(shard)
        atomic_write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def default_name(model: str) -> str:
    """A caption set name from a model id or folder: its last path component."""
    return Path(model.rstrip("/")).name or model


def _problem(response: Response) -> str | None:
    if not response.ok:
        return response.error or "no text"
    if not response.text.strip():
        return "the model wrote an empty caption"
    return None


def _row(sample: Sample, prompt: str, response: Response) -> dict[str, Any]:
    return {
        "id": sample.id,
        "caption": response.text.strip(),
        "prompt": prompt,
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
    }


def _difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Name the settings that changed, e.g. 'config.temperature: 0.0 -> 0.7'."""
    changes = []
    for section in ("engine", "config"):
        before, after = old.get(section, {}), new.get(section, {})
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changes.append(f"{section}.{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return "; ".join(changes[:3]) or "unknown change"
