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
    parser.add_argument("--cache", metavar="DIR",
                        help="for s3:// runs: where the local mirror (no image bytes) goes "
                             "(default: $CLIPCURATE_CACHE or the temp dir)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when the manifest and the parquet files disagree")


def run(args: argparse.Namespace) -> int:
    from clipcurate.pipelines.storage import is_uri

    out, compare = args.out, args.compare
    if is_uri(out) or (compare and is_uri(compare)):  # object storage: audit a local copy, upload the report
        from clipcurate.curation.audit.remote import download_run, upload_report

        out = download_run(args.out, args.cache) if is_uri(args.out) else out
        compare = download_run(compare, args.cache) if compare and is_uri(compare) else compare
    report = write_report(out, compare=compare, samples=args.samples, per_reason=args.per_reason)
    if is_uri(args.out):
        print(f"report uploaded: {upload_report(report.index.parent.parent, args.out)}")
    totals = report.stats["totals"]
    print(f"{report.index}  ({totals['input']:,} rows: {totals['kept']:,} kept, "
          f"{totals['rejected']:,} rejected)")
    for name in report.failed_checks:
        print(f"warning: check failed: {name} (see the report's Overview)", file=sys.stderr)
    if args.open:
        webbrowser.open(report.index.resolve().as_uri())
    return 1 if args.strict and report.failed_checks else 0
