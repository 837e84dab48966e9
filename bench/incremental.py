"""Incremental curation benchmark (issue 16): curate a new crawl against an earlier
release vs re-running the whole union from scratch.

Data: a release crawl of ``--rows`` image-text pairs (32 px JPEGs of smooth random
noise, captions of 12 words from a 5,000-word vocabulary) and a new crawl of ``--new``
pairs, ``--overlap`` of which are planted copies of release pairs, in three equal kinds:

* re-hosted: the same image bytes and caption at a new URL (``dedup_exact``'s case);
* reposted: the image re-encoded (JPEG q85) and one caption word changed (``dedup_minhash``'s);
* re-encoded: the image re-encoded (JPEG q75) under an unrelated caption (``dedup_perceptual``'s).

Recipe: ``dedup_exact``, ``dedup_minhash`` (pairs), ``dedup_perceptual`` (defaults). The
release is made first (not timed). Then, on the same warm Ray:

* **incremental**: the new crawl with ``--against`` the release (its shards hold every hash,
  so only the new rows are hashed; the release's rows enter the fits where they share a
  bucket with a new row);
* **from scratch**: the union of both crawls, every stage over every row.

``ratio`` = new samples curated per second, incremental over from scratch (both runs
deliver the curated new samples; the from-scratch run also re-curates the release).
``duplicate_recall``: planted copies rejected as ``duplicate_of_release`` naming the
release uid they copy. ``false_release_share``: genuinely new pairs rejected as release
duplicates. The last line is one JSON object.

    .venv/bin/python bench/incremental.py                  # 200k + 50k (about 15 min on 2 cores)
    .venv/bin/python bench/incremental.py --rows 20000     # new crawl = rows / 4
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/dedup.py would shadow the dedup package for this script and its Ray workers
sys.path[:] = [REPO] + [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(REPO, "bench")]

from clipcurate.pipelines.recipe import parse_recipe  # noqa: E402
from clipcurate.pipelines.runner import RunOptions, run_pipeline  # noqa: E402
from clipcurate.pipelines.stage import make_uid  # noqa: E402

STAGES = [{"dedup_exact": {}}, {"dedup_minhash": {}}, {"dedup_perceptual": {}}]
VOCABULARY = 5000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the release crawl")
    parser.add_argument("--new", type=int, default=None, help="rows of the new crawl (default rows / 4)")
    parser.add_argument("--overlap", type=float, default=0.3, help="share of the new crawl copied from the release")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args(argv)
    new_rows = args.new or args.rows // 4

    import ray

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    work = tempfile.mkdtemp(prefix="incremental-")
    started = time.perf_counter()
    release_in, new_in, planted = make_crawls(work, args.rows, new_rows, args.overlap)
    print(f"data: {args.rows:,} release rows, {new_rows:,} new rows ({len(planted):,} planted copies) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    options = RunOptions(progress=False, num_cpus=args.cpus)
    base = {"name": "incremental-bench", "input": {"partition_size": 10_000}, "output": {"shard_rows": 10_000},
            "stages": STAGES}

    release = os.path.join(work, "release")
    seconds = {}
    seconds["release"] = timed(lambda: run_pipeline(*parse_recipe(base), [release_in], release, options))
    print(f"release: {seconds['release']:.1f} s", flush=True)
    incremental = os.path.join(work, "incremental")
    manifest = {}
    seconds["incremental"] = timed(lambda: manifest.update(run_pipeline(
        *parse_recipe({**base, "against": [release]}), [new_in], incremental, options)))
    print(f"incremental: {seconds['incremental']:.1f} s", flush=True)
    union = os.path.join(work, "union")
    seconds["from_scratch"] = timed(lambda: run_pipeline(*parse_recipe(base), [release_in, new_in], union, options))
    print(f"from scratch (union): {seconds['from_scratch']:.1f} s", flush=True)
    ray.shutdown()

    rejects = pq.read_table(os.path.join(incremental, "rejects"), columns=["uid", "reject"]).to_pydict()
    reason = dict(zip(rejects["uid"], rejects["reject"]))
    found = sum(1 for uid, earlier in planted.items()
                if (reason.get(uid) or "").split(":", 1)[-1] == f"duplicate_of_release={earlier}")
    by_stage = {}
    for uid in planted:
        stage = (reason.get(uid) or "kept:").split(":", 1)[0]
        by_stage[stage] = by_stage.get(stage, 0) + 1
    new_uids = pq.read_table(new_in, columns=["url", "caption"]).to_pydict()
    fresh = [make_uid(u, c) for u, c in zip(new_uids["url"], new_uids["caption"])]
    fresh = [u for u in fresh if u not in planted]
    false = sum(1 for u in fresh if "duplicate_of_release=" in (reason.get(u) or ""))
    result = {
        "release_rows": args.rows, "new_rows": new_rows, "planted": len(planted), "cpus": args.cpus,
        "release_s": round(seconds["release"], 1), "incremental_s": round(seconds["incremental"], 1),
        "from_scratch_s": round(seconds["from_scratch"], 1),
        "incremental_new_rows_per_s": round(new_rows / seconds["incremental"], 1),
        "from_scratch_new_rows_per_s": round(new_rows / seconds["from_scratch"], 1),
        "from_scratch_union_rows_per_s": round((args.rows + new_rows) / seconds["from_scratch"], 1),
        "ratio": round(seconds["from_scratch"] / seconds["incremental"], 3),
        "duplicate_recall": round(found / max(len(planted), 1), 4),
        "planted_rejected_by": by_stage,
        "false_release_share": round(false / max(len(fresh), 1), 5),
        "duplicates_of_release": {s["name"]: s["summary"].get("duplicates_of_release")
                                  for s in manifest["stages"] if "summary" in s},
    }
    print(f"incremental {result['incremental_new_rows_per_s']:,} new rows/s vs from scratch "
          f"{result['from_scratch_new_rows_per_s']:,}: ratio {result['ratio']}; duplicate recall "
          f"{result['duplicate_recall']}, new pairs taken for release duplicates {result['false_release_share']}")
    print(json.dumps(result))
    return 0


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def make_crawls(work: str, rows: int, new_rows: int, overlap: float) -> tuple[str, str, dict[str, str]]:
    """Write both crawls as parquet with images; return their paths and {planted uid: release uid}."""
    rng = np.random.default_rng(16)
    words = np.array([f"w{i}" for i in range(VOCABULARY)])
    captions = [" ".join(c) for c in words[rng.integers(0, VOCABULARY, (rows + new_rows, 12))]]
    release_urls = [f"http://old.test/{i}.jpg" for i in range(rows)]
    release_images = [jpeg(seed, 90) for seed in range(rows)]
    release_in = os.path.join(work, "release.parquet")
    pq.write_table(pa.table({"url": release_urls, "caption": captions[:rows], "image": release_images}),
                   release_in, row_group_size=10_000)
    copies = int(new_rows * overlap)
    sources = rng.choice(rows, copies, replace=False)
    urls, texts, images, planted = [], [], [], {}
    for i in range(new_rows):
        url = f"http://new.test/{i}.jpg"
        if i < copies:
            source = int(sources[i])
            kind = i % 3
            if kind == 0:  # re-hosted
                caption, image = captions[source], release_images[source]
            elif kind == 1:  # reposted: re-encoded, one word changed
                edited = captions[source].split()
                edited[int(rng.integers(0, 12))] = "changed"
                caption, image = " ".join(edited), jpeg(source, 85)
            else:  # re-encoded under another caption
                caption, image = captions[rows + i], jpeg(source, 75)
            planted[make_uid(url, caption)] = make_uid(release_urls[source], captions[source])
        else:
            caption, image = captions[rows + i], jpeg(rows + i, 90)
        urls.append(url)
        texts.append(caption)
        images.append(image)
    new_in = os.path.join(work, "new.parquet")
    pq.write_table(pa.table({"url": urls, "caption": texts, "image": images}), new_in, row_group_size=10_000)
    return release_in, new_in, planted


def jpeg(seed: int, quality: int) -> bytes:
    """A 32 px JPEG of smooth noise (8x8 random colours, bicubic): distinct seeds differ in pHash."""
    from PIL import Image

    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((32, 32), Image.BICUBIC).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
