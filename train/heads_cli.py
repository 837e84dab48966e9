"""``curate heads``: train a head over CLIP embeddings, or show what a head file holds."""

from __future__ import annotations

import argparse
import json

HELP = (
    "Train a small head (linear or MLP) over CLIP embeddings on labelled pairs, for the clip_heads "
    "stage (NSFW, aesthetic, watermark, your own), or show a head file. Example: curate heads train "
    "--data labelled.parquet --label-col label --positive nsfw --name nsfw --output nsfw.head.pt"
)


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = commands.add_parser(
        "train", help="train a head on a labelled parquet and report held-out accuracy or correlation",
        description="Reads a parquet file or folder with a target (--label-col CLASS column, the head gives "
                    "the probability of --positive; or --score-col, the head predicts it) and either the "
                    "embedding columns clip_score writes (clip_image_emb, clip_text_emb; a run's shards "
                    "with `embeddings: true`) or image bytes that --model embeds. Holds out --holdout of "
                    "the rows by uid hash and prints the held-out figures as JSON (accuracy and AUC, or "
                    "Pearson and Spearman). The head file records the CLIP model, so the stage refuses "
                    "embeddings of another one.")
    train.add_argument("--data", required=True, help="labelled parquet file or folder (or a quoted glob)")
    target = train.add_mutually_exclusive_group(required=True)
    target.add_argument("--label-col", help="class column: a binary head (probability of --positive)")
    target.add_argument("--score-col", help="score column: a regression head (e.g. a mean rating)")
    train.add_argument("--positive", help="the class the head detects (not needed for booleans and 0/1)")
    train.add_argument("--name", required=True,
                       help="head name: the stage writes its score as <name>_score (e.g. nsfw, aesthetic)")
    train.add_argument("--output", required=True, help="head file to write (e.g. nsfw.head.pt)")
    train.add_argument("--model", help="CLIP model that embeds the images (open_clip name, local-dir:PATH or a "
                                       "checkpoint folder); with stored embeddings, a check that they match")
    train.add_argument("--pretrained", help="open_clip pretrained tag or weights file for --model")
    train.add_argument("--input", choices=["image", "image+text"], default="image",
                       help="what the head reads: the image embedding, or image and caption embeddings "
                            "concatenated (default: image)")
    train.add_argument("--hidden", type=int, nargs="*", default=[], metavar="N",
                       help="hidden layer widths of an MLP head (default: none, a linear head)")
    train.add_argument("--dropout", type=float, default=0.0, help="dropout after each hidden layer (default: 0)")
    train.add_argument("--epochs", type=int, default=200, help="passes over the training rows (default: 200)")
    train.add_argument("--lr", type=float, default=1e-2,
                       help="AdamW learning rate (default: 1e-2, for a linear head on normalised embeddings; "
                            "try 1e-3 for MLPs)")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: 1e-4)")
    train.add_argument("--batch-size", type=int, default=256, help="rows per step (default: 256)")
    train.add_argument("--holdout", type=float, default=0.2, help="share of rows held out (default: 0.2)")
    train.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default: 0)")
    train.add_argument("--device", default="auto", help="device that embeds images: auto, cpu, cuda")

    show = commands.add_parser("show", help="print a head file's metadata as JSON",
                               description="The model it reads, its input and normalisation, what its "
                                           "output means, and its training report.")
    show.add_argument("head", help="head file")
    show.add_argument("--format", default="clipcurate",
                      help="clipcurate (default), laion_aesthetic or laion_nsfw_h14 for published state dicts")


def run(args: argparse.Namespace) -> int:
    from clipcurate.pipelines.errors import UserError

    if args.action == "show":
        from clipcurate.train.heads import load_head

        try:
            head = load_head(args.head, args.format)
        except (ValueError, FileNotFoundError) as err:
            raise UserError(str(err)) from None
        print(json.dumps({"layers": head.layers, **head.metadata}, indent=1))
        return 0
    from clipcurate.train.head_training import train_head

    report = train_head(args.data, output=args.output, name=args.name, label_col=args.label_col,
                        positive=args.positive, score_col=args.score_col, model=args.model,
                        pretrained=args.pretrained, input=args.input, hidden=tuple(args.hidden),
                        dropout=args.dropout, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                        batch_size=args.batch_size, holdout=args.holdout, seed=args.seed, device=args.device)
    print(json.dumps(report.to_dict()))
    return 0
