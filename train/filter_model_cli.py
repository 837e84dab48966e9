"""``curate filter-model``: train a DFN filter model on trusted pairs (docs/filter-model.md)."""

from __future__ import annotations

import argparse
import json

HELP = ("Train the filter model that the clip_score stage scores a pool with (DFN), offline, by the "
        "measured recipe: LiT (locked pretrained MiniLM text tower, small ResNet image tower) with image "
        "augmentation on trusted pairs, then, with --pool, one round of self-training on the pool's "
        "best-scoring half. Prints one JSON object (with mismatch_auc when --heldout is given). "
        "Example: curate filter-model --trusted trusted/ --pool pool-sample.parquet --heldout heldout.parquet "
        "--output filter-model/   then use model: local-dir:filter-model/ in the clip_score stage")


def configure(parser: argparse.ArgumentParser) -> None:
    from clipcurate.train.filter_model import DEFAULTS

    parser.add_argument("--trusted", required=True, nargs="+",
                        help="trusted pairs: a run dir, shards dir, glob or parquet files with image + caption")
    parser.add_argument("--output", required=True, help="checkpoint directory to write (open_clip local-dir)")
    parser.add_argument("--pool", nargs="+",
                        help="pool pairs for self-training (image + caption; the first --pool-rows rows); "
                             "without it, one round on the trusted pairs")
    parser.add_argument("--heldout",
                        help="held-out pairs (image, caption, optional label) to report mismatch_auc on")
    parser.add_argument("--model", default=DEFAULTS["model"],
                        help="bundled config, JSON config or checkpoint dir, as curate train --model "
                             "(default: %(default)s)")
    parser.add_argument("--no-lock-text", dest="lock_text", action="store_false",
                        help="train the text tower too (a locked pretrained one is the recipe)")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="open_clip's default crop only instead of crops, flips and colour jitter")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                        help="steps of the first round (default: %(default)s)")
    parser.add_argument("--self-train-steps", type=int, default=DEFAULTS["self_train_steps"],
                        help="steps of the second round, with --pool (default: %(default)s)")
    parser.add_argument("--self-train-top", type=float, default=DEFAULTS["self_train_top"],
                        help="share of the scored pool added to the trusted pairs, best scores first "
                             "(default: %(default)s)")
    parser.add_argument("--pool-rows", type=int, default=DEFAULTS["pool_rows"],
                        help="pool rows to score (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"],
                        help="peak learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (same seed + threads: bitwise-identical CPU runs)")
    parser.add_argument("--verbose", action="store_true", help="print training progress")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from clipcurate.pipelines.errors import UserError
    from clipcurate.train.api import evaluate
    from clipcurate.train.filter_model import train_filter_model

    def one_or_many(values):
        return values if values is None or len(values) > 1 else values[0]

    try:
        result = train_filter_model(
            one_or_many(args.trusted), output=args.output, pool=one_or_many(args.pool), model=args.model,
            lock_text=args.lock_text, augment=args.augment, steps=args.steps,
            self_train_steps=args.self_train_steps, self_train_top=args.self_train_top, pool_rows=args.pool_rows,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads, quiet=not args.verbose)
    except ValidationError as err:
        raise UserError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                                  for e in err.errors())) from None
    summary = {"output": str(result.output), "steps": result.steps, "train_s": round(result.train_s, 1),
               "pool_scored": result.pool_scored, "pool_added": result.pool_added}
    if args.heldout:
        scores = evaluate(result.output, pairs=args.heldout)
        summary.update({k: scores[k] for k in ("mismatch_auc", "min_score_keep95", "mismatch_removed_at_keep95",
                                               "mismatch_pairs")})
    summary["clip_score_model"] = f"local-dir:{result.output}"
    print(json.dumps(summary))
    return 0
