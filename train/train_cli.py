"""``curate train``: train a CLIP/SigLIP model on a run's output shards."""

from __future__ import annotations

import argparse
import json

HELP = ("Train a contrastive image-text model (open_clip CLIP or SigLIP) on a run's shards and "
        "save an open_clip checkpoint directory. Example: curate train --data out/ --model clip-tiny "
        "--steps 300 --batch-size 64 --output ckpt/   (then: curate eval --model ckpt/ --data labeled.parquet). "
        "A DFN filter model: see docs/filter-model.md.")


def configure(parser: argparse.ArgumentParser) -> None:
    from clipcurate.train.options import add_arguments

    add_arguments(parser)  # each option's help states its default (train.options)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from clipcurate.pipelines.errors import UserError
    from clipcurate.train.api import train
    from clipcurate.train.options import from_arguments

    options = from_arguments(args)
    try:
        result = train(options.pop("data"), options.pop("model"), output=options.pop("output"), **options)
    except ValidationError as err:
        raise UserError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                                  for e in err.errors())) from None
    print(json.dumps({"output": str(result.output), "step": result.step, "loss": result.loss,
                      "samples_per_s": round(result.samples_per_s, 2), "wall_s": round(result.wall_s, 2)}))
    return 0
