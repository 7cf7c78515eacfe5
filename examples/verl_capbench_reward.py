"""Train a captioner with verl, rewarded by a running `capbench serve`, images included.

verl calls `capbench_rl/verl_reward.py` as its custom reward function: each rollout goes to the
service with its image and reference, and comes back as BalCapRL's rewards and their weighted sum.

1. Start the service (its judges, its cache):

       capbench serve --port 8765 --judge openai:Qwen/Qwen2.5-72B-Instruct --judge-base-url http://localhost:8000/v1

2. Write the data as verl reads it (parquet: prompt, images, reward_model.ground_truth = the
   reference caption, extra_info = image path, facts, questions), and check it against the service:

       python examples/verl_capbench_reward.py prepare --out ~/data/capbench     # capbench-mini, or --data FILE.jsonl
       python examples/verl_capbench_reward.py check --out ~/data/capbench       # score the references, no model

3. Train (any verl GRPO recipe for a VLM; these lines are what capbench adds):

       python3 -m verl.trainer.main_ppo \\
           data.train_files=$HOME/data/capbench/train.parquet data.val_files=$HOME/data/capbench/train.parquet \\
           data.image_key=images actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-3B-Instruct \\
           algorithm.adv_estimator=grpo \\
           reward.custom_reward_function.path=pkg://capbench_rl.verl_reward \\
           reward.custom_reward_function.name=compute_score_async \\
           +reward.custom_reward_function.reward_kwargs.url=http://127.0.0.1:8765 \\
           '+reward.custom_reward_function.reward_kwargs.rewards=[balcap_precision,balcap_recall,balcap_linguistic]' \\
           +reward.custom_reward_function.reward_kwargs.images=base64

   A verl older than its reward loop takes `custom_reward_function.*` at the top level and a file
   path: `python -c "import capbench_rl.verl_reward as m; print(m.__file__)"`, with
   `name=compute_score` (or `compute_score_batch` with `reward_model.reward_manager=batch`).
   For c-GDPO, verl's `gdpo` estimator reads each reward's key: `algorithm.adv_estimator=gdpo
   '+algorithm.gdpo_reward_keys=[balcap_precision,balcap_recall,balcap_linguistic]'
   reward.reward_manager.name=gdpo` (docs/rl.md says what a failed reward gives it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REWARD_KWARGS = {
    "url": "http://127.0.0.1:8765",
    "rewards": {"balcap_precision": 1.0, "balcap_recall": 1.0, "balcap_linguistic": 1.0},
    "images": "base64",
}
PROMPT = "<image>Describe this image in detail."


def samples(data: str | None) -> list[dict]:
    """Image path, reference caption, facts and questions per training image (capbench-mini by default)."""
    if data is None:
        import capbench

        return [
            {"id": s.id, "image": s.image.path, "caption": s.reference_caption, "facts": list(s.reference_facts),
             "questions": [q.to_dict() for q in s.questions]}
            for s in capbench.load_benchmark("mini", with_images=True).samples
        ]  # fmt: skip
    folder = Path(data).parent
    lines = [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()]
    return [
        {**line, "id": str(line.get("id", i)), "image": str(folder / line["image"])} for i, line in enumerate(lines)
    ]


def prepare(data: str | None, out: Path) -> None:
    """Write train.parquet in verl's RL dataset shape (as verl's examples/data_preprocess/geo3k.py does)."""
    import pandas as pd

    records = []
    for index, sample in enumerate(samples(data)):
        path = str(Path(sample["image"]).resolve())
        records.append({
            "data_source": "capbench",
            "prompt": [{"role": "user", "content": PROMPT}],
            "images": [{"bytes": Path(path).read_bytes()}],
            "ability": "captioning",
            "reward_model": {"style": "model", "ground_truth": sample["caption"]},
            "extra_info": {"index": index, "sample_id": sample["id"], "image_path": path,
                           "reference_facts": sample.get("facts", []),
                           "questions": sample.get("questions", [])},
        })  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_parquet(out / "train.parquet")
    print(f"{len(records)} rows -> {out / 'train.parquet'}")


def check(out: Path, url: str) -> None:
    """Call the reward as verl does for the first rows, with each reference caption as the rollout."""
    import pandas as pd

    from capbench_rl.verl_reward import compute_score

    frame = pd.read_parquet(out / "train.parquet")
    for row in frame.head(4).itertuples():
        truth, extra = row.reward_model["ground_truth"], dict(row.extra_info)
        result = compute_score(row.data_source, truth, truth, extra, **{**REWARD_KWARGS, "url": url})
        print(extra["sample_id"], {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("prepare", "check"))
    parser.add_argument("--out", type=Path, default=Path("~/data/capbench").expanduser())
    parser.add_argument("--data", help="JSONL of {image, caption} lines (default: capbench-mini)")
    parser.add_argument("--service", default=REWARD_KWARGS["url"], help="the service's URL")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.data, args.out)
    else:
        check(args.out, args.service)


if __name__ == "__main__":
    main()
