"""The ``capbench-rl`` command: train a captioner with capbench's metrics as rewards."""

from __future__ import annotations

import json
from typing import Any

import click

from capbench.errors import CapbenchError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train captioners with TRL's GRPOTrainer, rewarded by capbench's metrics (BalCapRL, c-GDPO)."""


@main.command("train")
@click.option("--config", "config", required=True, help="Recipe: a YAML file, or a bundled recipe's name.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field; repeatable.")
@click.option("--dry-run", is_flag=True, help="Check the recipe and print it, without loading anything.")
def train_command(config: str, overrides: tuple[str, ...], dry_run: bool) -> None:
    """Train the recipe's model; rollouts and reward figures go to its output_dir."""
    from capbench_rl.recipe import load_recipe

    try:
        recipe = load_recipe(config, overrides)
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
