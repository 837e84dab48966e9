"""``curate run``: run a recipe over an input list."""

from __future__ import annotations

import argparse
import os

from pipelines.manifest import format_funnel
from pipelines.recipe import load_recipe
from pipelines.runner import RunOptions, run_pipeline

HELP = (
    "Run a recipe (YAML) over a URL + caption list and write shards/, rejects/ and manifest.json. "
    "Example: curate run pipelines/recipes/datacomp-basic.yaml --input urls.parquet --output out/"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file (see pipelines/recipes/)")
    parser.add_argument("--input", required=True, nargs="+",
                        help="input file(s), folder or glob: parquet, csv, tsv, jsonl or txt")
    parser.add_argument("--output", required=True, help="output folder (rerun the same command to resume)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address to join (default: $RAY_ADDRESS, else an embedded Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all)")
    parser.add_argument("--force", action="store_true", help="delete an existing output folder first")
    parser.add_argument("--inline", action="store_true", help="run stages in this process (debugging, small data)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    recipe, stages = load_recipe(args.recipe)
    options = RunOptions(address=args.address, inline=args.inline, force=args.force,
                         progress=not args.no_progress, num_cpus=args.num_cpus)
    manifest = run_pipeline(recipe, stages, args.input, args.output, options, recipe_source=args.recipe)
    print(format_funnel(manifest))
    print(f"shards: {os.path.join(args.output, 'shards')}  manifest: {os.path.join(args.output, 'manifest.json')}")
    return 0
