"""``curate export RUN --format webdataset|uids --output ...``: a run's shards for other tools."""

from __future__ import annotations

import argparse
import json
import re

HELP = ("Export a run's kept samples. --format webdataset: tar shards of {uid}.jpg|png|webp (the stored bytes), "
        "{uid}.txt (caption) and {uid}.json (every other column), for open_clip's --train-data and other "
        "webdataset readers; resumable, one Ray task per tar, manifest.json with rows/bytes/sha256 per tar. "
        "--format uids: a DataComp subset file (sorted numpy u8,u8 array of the 128-bit uids). Paths may be local "
        "or s3://. Examples: curate export out/ --format webdataset --output out-wds/ --shard-size 1GB; "
        "curate export out/ --format uids --output subset.npy")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder (reads RUN/shards/) or a folder of parquet shards")
    parser.add_argument("--format", required=True, choices=("webdataset", "uids"))
    parser.add_argument("--output", required=True,
                        help="webdataset: a folder for the tars; uids: the .npy file to write")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shard-rows", type=int, default=10_000, metavar="N",
                      help="samples per tar (default 10000)")
    size.add_argument("--shard-size", metavar="SIZE",
                      help="about this many bytes per tar instead, e.g. 500MB or 1GB (rows from the shards' mean row size)")
    parser.add_argument("--embeddings", action="store_true",
                        help="also write *_emb columns (clip_image_emb) as {uid}.<column>.npy members")
    parser.add_argument("--inline", action="store_true", help="write in this process instead of Ray tasks")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded Ray)")
    parser.add_argument("--force", action="store_true", help="replace an export of other shards or options")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def run(args: argparse.Namespace) -> int:
    from clipcurate.pipelines.errors import UserError
    from clipcurate.pipelines.export import ExportOptions, export_run

    shard_bytes = parse_size(args.shard_size) if args.shard_size else None
    if args.shard_rows < 1:
        raise UserError("--shard-rows must be at least 1")
    options = ExportOptions(format=args.format, shard_rows=args.shard_rows, shard_bytes=shard_bytes,
                            embeddings=args.embeddings, inline=args.inline, address=args.address,
                            force=args.force, progress=not args.quiet)
    result = export_run(args.run, args.output, options)
    summary = {k: v for k, v in result.items() if k != "tars"}
    if "tars" in result:
        summary["tar_count"] = len(result["tars"])
    print(json.dumps(summary))
    return 0


def parse_size(text: str) -> int:
    from clipcurate.pipelines.errors import UserError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*", text.lower())
    if not match:
        raise UserError(f"--shard-size {text}: expected a size such as 500MB or 1GB")
    unit = match.group(2).rstrip("b").rstrip("i")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[unit]
    if "i" in match.group(2):
        scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit]
    return max(1, int(float(match.group(1)) * scale))
