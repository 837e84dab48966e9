"""``curate index RUN``: a faiss index over a run's CLIP image embeddings, for ``curate search``."""

from __future__ import annotations

import argparse
import json

HELP = ("Build RUN/index/: a faiss index over the kept rows' clip_image_emb (written by clip_score with "
        "embeddings: true; with --model, the images are embedded now). Exact (flat) up to 100k rows, HNSW up to "
        "10M, IVF-PQ with fp16 reranking beyond; index.json records the kind and the CLIP model that made the "
        "embeddings, which text and image queries must use. Example: curate index out/ && "
        "curate search out/ --text 'a red bicycle'")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="output folder of 'curate run' (local or s3://...)")
    parser.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivfpq"),
                        help="index kind (default auto: by row count)")
    parser.add_argument("--model", help="embed the images with this CLIP model when the shards hold no "
                                        "clip_image_emb (checkpoint dir, bundled config or open_clip name)")
    parser.add_argument("--pretrained", help="open_clip pretrained tag or weights file for --model")
    parser.add_argument("--force", action="store_true", help="rebuild even when the index is current")


def run(args: argparse.Namespace) -> int:
    from clipcurate.curation.search import build_index

    info = build_index(args.run, kind=args.kind, model=args.model, pretrained=args.pretrained, force=args.force)
    print(json.dumps({k: v for k, v in info.items() if k != "shards"}))
    return 0
