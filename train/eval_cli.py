"""``curate eval``: zero-shot classification and retrieval of a checkpoint."""

from __future__ import annotations

import argparse
import json

HELP = ("Zero-shot top-1/top-5 (class names x prompt templates) on a labeled parquet (image, label, "
        "optional caption) and image<->text retrieval recall@1/5/10 on held-out pairs. Prints one JSON "
        "object. Example: curate eval --model ckpt/ --data labeled.parquet")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint directory (open_clip local-dir), bundled config or open_clip name")
    parser.add_argument("--data", required=True, help="labeled parquet: image (encoded bytes), label (class name)")
    parser.add_argument("--pairs", help="held-out parquet of image + caption for retrieval "
                                        "(default: --data's caption column, if any)")
    parser.add_argument("--templates", help="file of prompt templates, one per line with {} for the class name, "
                                            "or 'imagenet' for CLIP's 80 (default: 8 generic ones)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--log", help="also append the result as one JSON line to this file")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipelines.errors import UserError
    from train.api import evaluate

    for name in ("data", "pairs"):
        value = getattr(args, name)
        if value is not None and not Path(value).is_file():
            raise UserError(f"--{name} {value}: no such file")
    result = evaluate(args.model, args.data, pairs=args.pairs, templates=args.templates,
                      batch_size=args.batch_size, device=args.device, log=args.log)
    print(json.dumps(result))
    return 0
