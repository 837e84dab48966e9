"""``curate ablate``: run recipe variants over one pool, train on each at equal samples
seen, evaluate, and compare (``OUT/report/index.html``, ``OUT/best_recipe.yaml``)."""

from __future__ import annotations

import argparse
import shutil

from clipcurate.pipelines.runner import RunOptions

HELP = (
    "Compare recipe variants by the models trained on what they keep: one pool, a base recipe, variants, "
    "equal samples seen, zero-shot eval over seeds. Shared work (download, CLIP scores, common stages) runs "
    "once; rerun to resume. Example: curate ablate experiment.yaml --output ablation/"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment YAML: pool, recipe, eval, train, truth, variants "
                                           "(see docs/ablate.md)")
    parser.add_argument("--output", required=True, help="folder for cache/, train/, report/ and best_recipe.yaml")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: embedded Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all)")
    parser.add_argument("--inline", action="store_true", help="run stages in this process (small pools, debugging)")
    parser.add_argument("--force", action="store_true", help="delete the output folder first (no reuse)")


def run(args: argparse.Namespace) -> int:
    from clipcurate.curation.ablate import load_experiment, run_ablation
    from clipcurate.curation.ablate_report import summary_table

    experiment = load_experiment(args.experiment)
    if args.force:
        shutil.rmtree(args.output, ignore_errors=True)
    options = RunOptions(address=args.address, inline=args.inline, progress=False, num_cpus=args.num_cpus)
    report = run_ablation(experiment, args.output, options)
    print(summary_table(report))
    print(f"report: {args.output}/report/index.html  best recipe: {args.output}/best_recipe.yaml")
    return 0
