"""``curate stats OUT [--json]``: a run's key numbers on the terminal, for people and scripts."""

from __future__ import annotations

import argparse
import json

from clipcurate.curation.audit.stats import compute_stats, key_numbers

HELP = (
    "Print a run's key numbers: rows in/kept/rejected, each stage's effect, rejection reasons, "
    "CLIP score and caption summaries, duplicates, MetaCLIP t, and whether the manifest matches "
    "the parquet files. --json prints one JSON object for scripts. Example: curate stats out/ --json"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder of 'curate run' (holds manifest.json)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    numbers = key_numbers(compute_stats(args.out))
    if args.json:
        print(json.dumps(numbers, indent=1))
        return 0
    print(_text(numbers))
    return 0


def _text(k: dict) -> str:
    t = k["totals"]
    keep = f"{t['keep_rate']:.1%}" if t["keep_rate"] is not None else "-"
    lines = [f"{k['out']}: {t['input']:,} rows, {t['kept']:,} kept ({keep}), {t['rejected']:,} rejected", ""]
    if k["stages"]:
        width = max(len(s["name"]) for s in k["stages"])
        lines.append(f"{'stage':<{width}}  {'in':>12}  {'kept':>12}  {'rejected':>12}")
        for s in k["stages"]:
            lines.append(f"{s['name']:<{width}}  {s['in']:>12,}  {s['kept']:>12,}  {s['rejected']:>12,}")
        lines.append("")
    if k["warnings"]:
        lines += [f"warning: {message}" for message in k["warnings"]] + [""]
    if k["reasons"]:
        lines.append("rejections by reason:")
        lines += [f"  {reason}: {n:,}" for reason, n in k["reasons"].items()]
        lines.append("")
    clip = k["clip_score_kept"]
    if clip:
        lines.append(f"clip_score (kept): mean {clip['mean']:.4f}, median {clip['p50']:.4f}, "
                     f"p5 {clip['p05']:.4f}, p95 {clip['p95']:.4f}")
    if k["caption_words_kept_median"] is not None:
        lines.append(f"caption words (kept): median {k['caption_words_kept_median']:g}")
    if k["langs_kept"]:
        lines.append("languages (kept): " + ", ".join(f"{l} {n:,}" for l, n in k["langs_kept"].items()))
    if k["duplicates"]:
        lines.append("duplicates removed: " + ", ".join(f"{s} {n:,}" for s, n in k["duplicates"].items()))
    if k["metaclip_t"] is not None:
        lines.append(f"metaclip t: {k['metaclip_t']:,}")
    lines.append("checks: ok" if k["checks_ok"] else "checks FAILED: " + "; ".join(k["failed_checks"]))
    return "\n".join(lines)
