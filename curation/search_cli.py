"""``curate search RUN --text ... | --image FILE``: the nearest kept samples, printed and as an HTML page."""

from __future__ import annotations

import argparse
import json
import sys

HELP = ("Find the kept samples nearest to a text or an image in a run's index (curate index RUN first), "
        "embedded with the CLIP model that made the index. Prints one line per hit (rank, cosine score, uid, "
        "caption) and writes an HTML page with thumbnails. Examples: curate search out/ --text 'a dog on a beach' "
        "-k 20; curate search out/ --image query.jpg --html dupes.html")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="output folder of 'curate run' holding index/")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query")
    query.add_argument("--image", metavar="FILE", help="an image file as the query")
    parser.add_argument("-k", type=int, default=20, help="how many samples (default 20)")
    parser.add_argument("--html", metavar="PATH", help="where to write the page (default: ./search-<query>.html)")
    parser.add_argument("--model", help="the model to embed the query with (default: the one the index records); "
                                        "refused unless it made the index's embeddings")
    parser.add_argument("--pretrained")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the hits as JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipcurate.curation.search import page_name, search_run, write_search_page
    from clipcurate.pipelines.errors import UserError

    if args.k < 1:
        raise UserError("-k must be at least 1")
    image = None
    if args.image is not None:
        if not Path(args.image).is_file():
            raise UserError(f"--image {args.image}: no such file")
        image = Path(args.image).read_bytes()
    found = search_run(args.run, text=args.text, image=image, k=args.k, model=args.model,
                       pretrained=args.pretrained, device=args.device)
    for hit in found["results"]:
        if args.json:
            print(json.dumps({k: v for k, v in hit.items() if k != "image"}))
        else:
            caption = (hit.get("caption") or "").replace("\n", " ")
            print(f"{hit['rank']:>3}  {hit['score']:.4f}  {hit['uid']}  {caption[:100]}")
    page = write_search_page(found, args.html or page_name(args.text, args.image))
    print(f"page: {page}", file=sys.stderr)
    return 0
