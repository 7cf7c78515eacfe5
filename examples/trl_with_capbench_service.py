"""Train a captioner with TRL's GRPOTrainer, rewarded by a running `capbench serve` (BalCapRL, c-GDPO).

The script imports no capbench judge: the rewards are `capbench_rl.service_client.ServiceReward`
objects, which send each batch of rollouts to the service and get one value per rollout back.

Start the service first (its judges, its cache), then check the connection without a policy,
then train:

    capbench serve --port 8765 --judge openai:Qwen/Qwen2.5-72B-Instruct --judge-base-url http://localhost:8000/v1
    python examples/trl_with_capbench_service.py --check            # score the references: no model loads
    python examples/trl_with_capbench_service.py --model Qwen/Qwen2.5-VL-3B-Instruct --max-steps 10

The data is capbench-mini unless `--data FILE.jsonl` names lines of `{"image": path, "caption":
reference}` (optional `id`, `facts`, `questions`, `domain`): the format of capbench-rl's `data_file`.
Images go inline (base64) unless `--images path`, for a service that shares this file system
(start it with `--images-root` on the images' folder). Set CAPBENCH_SERVE_TOKEN when the service
wants a token. `capbench-rl train --set reward_service=http://127.0.0.1:8765` does the same with a recipe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from capbench_rl.service_client import ServiceReward

#: BalCapRL's rewards and weights (α, β, γ = 1), as the bundled recipes set them.
REWARDS = {"balcap_precision": 1.0, "balcap_recall": 1.0, "balcap_linguistic": 1.0}
PROMPT = "Describe this image in detail."


def rows(data: str | None) -> list[dict]:
    """The training rows: image path, reference caption, facts, questions (the columns the rewards read)."""
    if data is None:
        import capbench

        samples = capbench.load_benchmark("mini", with_images=True).samples
        found = [
            {"sample_id": s.id, "image_path": s.image.path, "reference_caption": s.reference_caption,
             "reference_facts": list(s.reference_facts), "questions": [q.to_dict() for q in s.questions],
             "domain": s.domain}
            for s in samples
        ]  # fmt: skip
        return found
    folder = Path(data).parent
    lines = [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()]
    return [
        {"sample_id": str(line.get("id", i)), "image_path": str(folder / line["image"]),
         "reference_caption": line["caption"], "reference_facts": line.get("facts", []),
         "questions": line.get("questions", []), "domain": line.get("domain", "default")}
        for i, line in enumerate(lines)
    ]  # fmt: skip


def rewards(url: str, images: str) -> list[ServiceReward]:
    """One reward function per BalCapRL reward; the linguistic one is 0 outside the length band [0.5, 2]."""
    return [
        ServiceReward(name, url, images=images, band=(0.5, 2.0) if name == "balcap_linguistic" else None)
        for name in REWARDS
    ]


def check(url: str, images: str, data: list[dict]) -> None:
    """Score each reference caption as if a policy had written it: the service, the data and the images work."""
    columns = {key: [row[key] for row in data] for key in data[0]}
    completions = [[{"role": "assistant", "content": row["reference_caption"]}] for row in data]
    for reward in rewards(url, images):
        values = asyncio.run(reward(prompts=[None] * len(data), completions=completions, **columns))
        print(reward.__name__, ["-" if v is None else round(v, 3) for v in values])


def train(args: argparse.Namespace, data: list[dict]) -> None:
    """GRPO with c-GDPO aggregation (normalise each reward in its group, weighted sum, normalise over the batch)."""
    from datasets import Dataset
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    dataset = Dataset.from_list([{"prompt": prompt, "image": Image.open(r["image_path"]).convert("RGB"), **r}
                                 for r in data])  # fmt: skip
    config = GRPOConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=256,
        reward_weights=list(REWARDS.values()),
        multi_objective_aggregation="normalize_then_sum",
        logging_steps=1,
        report_to=[],
    )
    trainer = GRPOTrainer(model=args.model, reward_funcs=rewards(args.service, args.images), args=config,
                          train_dataset=dataset)  # fmt: skip
    trainer.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", default="http://127.0.0.1:8765", help="the service's URL")
    parser.add_argument("--data", help="JSONL of {image, caption} lines (default: capbench-mini)")
    parser.add_argument("--images", choices=("base64", "path"), default="base64", help="how images reach the service")
    parser.add_argument("--check", action="store_true", help="score the reference captions and stop (no model)")
    parser.add_argument("--model", default="Qwen/Qwen2.5-VL-3B-Instruct", help="the policy")
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--output-dir", default="runs/trl-capbench-service")
    args = parser.parse_args()
    data = rows(args.data)
    if args.check:
        check(args.service, args.images, data)
    else:
        train(args, data)


if __name__ == "__main__":
    main()
