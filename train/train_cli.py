"""``curate train``: train a CLIP/SigLIP model on a run's output shards."""

from __future__ import annotations

import argparse
import json

HELP = ("Train a contrastive image-text model (open_clip CLIP or SigLIP) on a run's shards and "
        "save an open_clip checkpoint directory. Example: curate train --data out/ --model clip-tiny "
        "--steps 300 --batch-size 64 --output ckpt/   (then: curate eval --model ckpt/ --data labeled.parquet). "
        "A DFN filter model: see docs/filter-model.md.")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--data", required=True, nargs="+",
                        help="a run directory (reads OUT/shards/*.parquet), a shards directory, "
                             "a glob or parquet files")
    parser.add_argument("--output", required=True,
                        help="checkpoint directory to write (open_clip local-dir format)")
    parser.add_argument("--model", default="clip-tiny",
                        help="bundled config (clip-tiny, lit-tiny), open_clip name (ViT-B-32), "
                             "JSON config or checkpoint dir")
    parser.add_argument("--pretrained", help="open_clip pretrained tag or weights file (open_clip model names only)")
    parser.add_argument("--loss", choices=["clip", "siglip"], default="clip", help="open_clip ClipLoss or SigLipLoss")
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="optimizer steps to train")
    length.add_argument("--epochs", type=float, help="passes over the shards (converted to steps)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per step per process")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW)")
    parser.add_argument("--warmup", type=int,
                        help="linear warmup steps before the cosine decay (default: 5%% of steps)")
    parser.add_argument("--wd", type=float, default=0.1, help="AdamW weight decay (not on gains, biases, logit scale)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    parser.add_argument("--precision", choices=["auto", "fp32", "amp_bf16", "amp_fp16"], default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--accum", type=int, default=1,
                        help="split each batch into this many micro-batches (less memory, same contrastive batch)")
    parser.add_argument("--lock-text", action="store_true",
                        help="LiT: freeze the (pretrained) text tower, train the image tower only")
    parser.add_argument("--augment", action="store_true",
                        help="random resized crops (50-100%%), horizontal flips and colour jitter on training "
                             "images, seeded, instead of open_clip's 90-100%% crop")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads for the run (same seed + threads: bitwise-identical CPU runs)")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes per rank")
    parser.add_argument("--shuffle-buffer", type=int, default=1000, help="rows in the streaming shuffle buffer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--save-every", type=int, help="also save a checkpoint every N steps")
    parser.add_argument("--stop-after", type=int, help="save and stop at this step; continue later with --resume")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in --output (same data, ranks and --workers); "
                             "starts fresh if there is none")
    parser.add_argument("--log-every", type=int, default=10, help="log loss and samples/s every N steps")
    parser.add_argument("--ray-workers", type=int, default=1,
                        help="more than 1: data-parallel training with Ray Train (one process per worker)")
    parser.add_argument("--gpu", action="store_true", help="with --ray-workers: one GPU per worker")
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from clipcurate.pipelines.errors import UserError
    from clipcurate.train.api import train

    try:
        result = train(args.data if len(args.data) > 1 else args.data[0], args.model, output=args.output,
                       steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, loss=args.loss,
                       lr=args.lr, warmup=args.warmup, wd=args.wd, grad_clip=args.grad_clip or None,
                       precision=args.precision, accum=args.accum, lock_text=args.lock_text,
                       augment=args.augment, threads=args.threads,
                       pretrained=args.pretrained, workers=args.workers, shuffle_buffer=args.shuffle_buffer,
                       seed=args.seed, device=args.device, save_every=args.save_every,
                       stop_after=args.stop_after, resume=args.resume, log_every=args.log_every,
                       ray_workers=args.ray_workers, use_gpu=args.gpu, quiet=args.quiet)
    except ValidationError as err:
        raise UserError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                                  for e in err.errors())) from None
    print(json.dumps({"output": str(result.output), "step": result.step, "loss": result.loss,
                      "samples_per_s": round(result.samples_per_s, 2), "wall_s": round(result.wall_s, 2)}))
    return 0
