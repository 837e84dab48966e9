"""``curate eval``: zero-shot classification, retrieval and mismatch detection of a checkpoint."""

from __future__ import annotations

import argparse
import json

HELP = ("Zero-shot top-1 and, over more than 5 classes, top-5 accuracy (class names x prompt templates) "
        "on a labeled set (image, label, optional caption; label = class names, or integers named by a "
        "class_name column, --class-names or a Hugging Face ClassLabel); image<->text retrieval "
        "recall@1/5/10 and mismatch detection on held-out pairs (mismatch_auc: true pairs vs the same "
        "images with another pair's caption, of another label when the pairs have a label column: how "
        "good a DFN filter model is). Prints one JSON object. "
        "Examples: curate eval --model ckpt/ --data labeled.parquet; "
        "curate eval --model filter-model/ --pairs heldout.parquet")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint directory (open_clip local-dir), bundled config or open_clip name")
    parser.add_argument("--data", help="labeled set for zero-shot: a parquet file, folder or glob, or a Hugging Face "
                                       "save_to_disk folder, with image (encoded bytes or an HF Image) and label "
                                       "(class name; or an integer with a class_name column, --class-names or an "
                                       "HF ClassLabel)")
    parser.add_argument("--class-names", help="names of integer labels, in label order: a text file with one name per "
                                              "line (line 1 = label 0), or a JSON list")
    parser.add_argument("--label-column", default="label", help="the column holding the labels (default: label)")
    parser.add_argument("--pairs", help="held-out parquet of image + caption (+ optional label) for retrieval "
                                        "and mismatch_auc (default: --data's caption column, if any)")
    parser.add_argument("--templates", help="file of prompt templates, one per line with {} for the class name, "
                                            "or 'imagenet' for CLIP's 80 (default: 8 generic ones)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="draws the mismatched captions")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--log", help="also append the result as one JSON line to this file")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipcurate.pipelines.errors import UserError
    from clipcurate.train.api import evaluate

    if args.data is None and args.pairs is None:
        raise UserError("give --data (labeled, zero-shot), --pairs (held-out pairs, mismatch_auc) or both")
    for name in ("data", "pairs"):
        value = getattr(args, name)
        if value is not None and not Path(value).exists() and not any(c in value for c in "*?["):
            raise UserError(f"--{name} {value}: no such file or folder")
    result = evaluate(args.model, args.data, pairs=args.pairs, templates=args.templates,
                      batch_size=args.batch_size, device=args.device, seed=args.seed, log=args.log,
                      class_names=args.class_names, label_column=args.label_column)
    print(json.dumps(result))
    return 0
