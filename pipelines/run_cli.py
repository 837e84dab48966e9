"""``curate run``: run a recipe over an input list, or preview it on a sample (``--sample``)."""

from __future__ import annotations

import argparse
import os
import sys

from clipcurate.pipelines.manifest import (PROJECTION_FORMULA, format_funnel, format_projection, format_resume,
                                           reason_fix)
from clipcurate.pipelines.recipe import load_recipe
from clipcurate.pipelines.runner import PREVIEW, RunOptions, run_pipeline, run_preview

HELP = (
    "Run a recipe (YAML) over a URL + caption list and write shards/, rejects/ and manifest.json, "
    "then print the funnel: rows each stage received, kept and rejected, the share it removed (a stage "
    "over the recipe's warn_reject_share, default 30%, is marked '!' and explained), its worker-seconds "
    "and rows per worker-second. "
    "Example: curate run pipelines/recipes/datacomp-basic.yaml --input urls.parquet --output out/ "
    "(preview first: add --sample 1000)"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file (see pipelines/recipes/)")
    parser.add_argument("--input", required=True, nargs="+",
                        help="input file(s), folder or glob: parquet, csv, tsv, jsonl or txt")
    parser.add_argument("--output", required=True, help="output folder (rerun the same command to resume)")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help=f"preview: run on N input rows drawn at random (by uid hash and the recipe seed, the "
                             f"same N rows every time) into OUTPUT/{PREVIEW}/ (replaced on each preview; a full "
                             f"run's files are never touched), print the funnel and warnings, each stage's time "
                             f"and rows/s, and an estimate of the full input's wall time on this machine or "
                             f"cluster: {PROJECTION_FORMULA}")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address to join (default: $RAY_ADDRESS, else an embedded Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all)")
    parser.add_argument("--force", action="store_true", help="delete an existing output folder first")
    parser.add_argument("--on-change", choices=("recompute", "refuse"), default="recompute",
                        help="when OUTPUT holds unfinished work made under another recipe: redo the work from the "
                             "first changed stage, keeping what still holds (the download, unless its own "
                             "parameters changed) (default), or stop with an error naming that stage")
    parser.add_argument("--against", action="append", default=[], metavar="RELEASE",
                        help="curate incrementally against an earlier release (the output folder of a finished "
                             "run; repeat for several): every dedup stage also rejects new pairs that duplicate the "
                             "release's kept pairs (<stage>:duplicate_of_release=<earlier uid>) and MetaCLIP "
                             "continues from its entry counts; the release is only read. Example: curate run "
                             "recipe.yaml --input crawl-2024-06/ --output rel-2024-06/ --against rel-2024-01/")
    parser.add_argument("--against-cache", default=None, metavar="DIR",
                        help="where hashes and signatures of the --against releases are cached, computed once "
                             "(default: OUTPUT/_work/against; share one folder between runs to reuse them)")
    parser.add_argument("--blocklist", action="append", default=[], metavar="FILE",
                        help="samples that must never come back (repeatable): parquet/csv/jsonl with columns uid, "
                             "url, sha256, phash, or txt lines 'url:...', 'sha256:...'; URLs and uids are checked "
                             "before the download (blocklist:url, blocklist:uid), image hashes after it "
                             "(blocklist_image:sha256, blocklist_image:phash=<blocked hash>)")
    parser.add_argument("--inline", action="store_true", help="run stages in this process (debugging, small data)")
    parser.add_argument("--set", action="append", default=[], metavar="LABEL.PARAM=VALUE", dest="sets",
                        help="override one recipe value (repeatable), typed and validated as if the YAML said it, "
                             "recorded in the manifest: --set clip_score.keep_matched=0.6 --set seed=1 "
                             "--set language_filter.keep_languages=[en,de]")
    parser.add_argument("--no-progress", action="store_true",
                        help="no live view (per stage: rows so far, kept, rows/s, ETA; bars on a terminal, a line "
                             "every 30 s otherwise)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Ray's own logs here (by default they go to OUTPUT/_work/ray.log)")
    add_exit_options(parser)


def run(args: argparse.Namespace) -> int:
    recipe, stages = load_recipe(args.recipe, against=args.against, blocklist=args.blocklist, sets=args.sets)
    options = RunOptions(address=args.address, inline=args.inline, force=args.force, on_change=args.on_change,
                         progress=not args.no_progress, quiet=not args.verbose, num_cpus=args.num_cpus,
                         release_cache=args.against_cache)
    if args.sample is not None:
        manifest = run_preview(recipe, stages, args.input, args.output, args.sample, options,
                               recipe_source=args.recipe)
        output = os.path.join(args.output, PREVIEW)
        print(format_funnel(manifest, output))
        print(format_projection(manifest["preview"]))
        print(f"preview: {output}  manifest: {os.path.join(output, 'manifest.json')}  audit: curate audit {output}")
        return exit_code(manifest, fail_on_warning=args.fail_on_warning)
    manifest = run_pipeline(recipe, stages, args.input, args.output, options, recipe_source=args.recipe)
    print(format_funnel(manifest, args.output))
    print(format_resume(manifest.get("resume") or {}))
    print(f"shards: {os.path.join(args.output, 'shards')}  manifest: {os.path.join(args.output, 'manifest.json')}")
    return exit_code(manifest, fail_on_warning=args.fail_on_warning)


# ---------------------------------------------------------------- exit status, for scripts

EXIT_NOTHING_KEPT = 3
EXIT_WARNINGS = 4


def add_exit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fail-on-warning", action="store_true",
                        help=f"exit with status {EXIT_WARNINGS} when the funnel flags a stage (the '!' lines), so a "
                             f"script stops there; a run that rejects every row exits {EXIT_NOTHING_KEPT} "
                             f"with or without it")


def exit_code(manifest: dict, *, fail_on_warning: bool) -> int:
    """0, or why a script should not go on, said on stderr in one line: a run that kept
    nothing of a non-empty input (a stopped web, a wrong column) is not a success."""
    totals = manifest["totals"]
    if totals["input"] and not totals["kept"]:
        reason, rows = _top_reason(manifest)
        fix = reason_fix(reason)
        print(f"curate run: every one of the {totals['input']:,} input rows was rejected; top reason {reason} "
              f"({rows:,} rows){'; ' + fix if fix else ''}", file=sys.stderr)
        return EXIT_NOTHING_KEPT
    if fail_on_warning and manifest.get("warnings"):
        print(f"curate run: --fail-on-warning: {len(manifest['warnings'])} stage(s) flagged (the '!' lines above)",
              file=sys.stderr)
        return EXIT_WARNINGS
    return 0


def _top_reason(manifest: dict) -> tuple[str, int]:
    """The reject reason with the most rows over all stages (ties: the first by name)."""
    counts: dict[str, int] = {}
    for stage in manifest["stages"]:
        for reason, rows in stage["reasons"].items():
            counts[reason] = counts.get(reason, 0) + rows
    return min(counts.items(), key=lambda item: (-item[1], item[0]))
