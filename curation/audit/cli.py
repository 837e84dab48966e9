"""``curate audit OUT [--compare OTHER_OUT] [--open]``: the HTML report of a run."""

from __future__ import annotations

import argparse
import sys
import webbrowser

from clipcurate.curation.audit.report import write_report

HELP = (
    "Write OUT/report/index.html: plots of a run's funnel (rows in, kept, rejected by reason), "
    "CLIP scores, captions, image sizes, languages, duplicate groups, MetaCLIP balancing, and sample "
    "thumbnails per decision; plus OUT/report/stats.json with every number. Statistics come from "
    "parquet columns only (image bytes are read just for the sampled thumbnails). The report is "
    "self-contained and opens offline. Example: curate audit out/ --compare out-strict/"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder of 'curate run' (holds manifest.json)")
    parser.add_argument("--compare", metavar="OTHER_OUT",
                        help="a second run (e.g. another recipe on the same pool) to show side by side")
    parser.add_argument("--open", action="store_true", help="open the report in the default browser")
    parser.add_argument("--samples", type=int, default=24, metavar="N",
                        help="kept rows to show as thumbnails (default: 24)")
    parser.add_argument("--per-reason", type=int, default=6, metavar="N",
                        help="rejected rows to show per rejection reason (default: 6)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when the manifest and the parquet files disagree")


def run(args: argparse.Namespace) -> int:
    report = write_report(args.out, compare=args.compare, samples=args.samples, per_reason=args.per_reason)
    totals = report.stats["totals"]
    print(f"{report.index}  ({totals['input']:,} rows: {totals['kept']:,} kept, "
          f"{totals['rejected']:,} rejected)")
    for name in report.failed_checks:
        print(f"warning: check failed: {name} (see the report's Overview)", file=sys.stderr)
    if args.open:
        webbrowser.open(report.index.resolve().as_uri())
    return 1 if args.strict and report.failed_checks else 0
