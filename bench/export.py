"""``curate export --format webdataset`` rows/s against reading the same parquet shards alone.

A run's shards are synthesised: ``--rows`` kept rows of JPEG bytes of about ``--image-kb``
(a few real JPEGs of coloured shapes, each row made unique by bytes after the JPEG end
marker, which decoders ignore, so parquet cannot dictionary-encode them away), captions,
urls, sizes, a CLIP score and a 512-d float16 ``clip_image_emb`` as a run with
``clip_score`` embeddings has. The baseline reads every column of every shard with
pyarrow (what any consumer of the shards pays at least); ours writes the tars inline in
one process (like for like: one process each) and, separately, through Ray tasks on
``--cpus`` CPUs (the default path). ``ratio`` = inline export rows/s / read rows/s: the
share of the read speed the export keeps. Files go to the page cache first (a warm-up
read), so both sides read from memory.

    .venv/bin/python bench/export.py --rows 40000
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from clipcurate.pipelines.export import ExportOptions, export_run
from clipcurate.pipelines.stage import make_uid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--image-kb", type=float, default=20.0, help="mean JPEG size")
    parser.add_argument("--shard-rows", type=int, default=10_000, help="rows per parquet shard and per tar")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each side")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        run = root / "run"
        megabytes = make_shards(run, args.rows, args.image_kb, args.shard_rows)
        files = sorted((run / "shards").glob("*.parquet"))
        read_all(files)  # warm the page cache

        read_s = min(timed(lambda: read_all(files)) for _ in range(args.repeats))
        inline_s = min(timed(lambda i=i: export_run(str(run), str(root / f"inline{i}"), ExportOptions(
            shard_rows=args.shard_rows, inline=True, progress=False))) for i in range(args.repeats))
        import ray

        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        export_run(str(run), str(root / "warm"), ExportOptions(shard_rows=args.rows, progress=False))  # start workers
        ray_s = min(timed(lambda i=i: export_run(str(run), str(root / f"ray{i}"), ExportOptions(
            shard_rows=args.shard_rows, progress=False))) for i in range(args.repeats))
        tar_mb = sum(p.stat().st_size for p in (root / "inline0").glob("*.tar")) / 1e6
        result = {
            "rows": args.rows, "parquet_mb": round(megabytes, 1), "tar_mb": round(tar_mb, 1),
            "read_rows_per_s": round(args.rows / read_s), "read_mb_per_s": round(megabytes / read_s),
            "export_inline_rows_per_s": round(args.rows / inline_s),
            "export_inline_mb_per_s": round(tar_mb / inline_s),
            "export_ray_rows_per_s": round(args.rows / ray_s), "ray_cpus": args.cpus,
            "ratio": round(read_s / inline_s, 3), "ratio_ray": round(read_s / ray_s, 3),
        }
        result["meets_0_5"] = result["ratio"] >= 0.5
        print(f"read parquet: {read_s:.2f} s, export inline: {inline_s:.2f} s, export on Ray ({args.cpus} CPUs): "
              f"{ray_s:.2f} s for {args.rows:,} rows ({megabytes:.0f} MB parquet, {tar_mb:.0f} MB tars)")
        print(json.dumps(result))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_shards(run: Path, rows: int, image_kb: float, shard_rows: int) -> float:
    rng = np.random.default_rng(0)
    bases = [_jpeg(rng, image_kb) for _ in range(16)]
    (run / "shards").mkdir(parents=True)
    for part, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        ids = np.arange(start, start + n)
        urls = [f"https://img.example/{i}.jpg" for i in ids]
        captions = [f"a photo of shape number {i} on a plain background" for i in ids]
        images = [bases[i % len(bases)] + int(i).to_bytes(8, "little") for i in ids]
        emb = rng.standard_normal((n, 512)).astype(np.float16)
        table = pa.table({
            "uid": [make_uid(u, c) for u, c in zip(urls, captions)], "url": urls, "caption": captions,
            "image": pa.array(images, pa.binary()),
            "width": pa.array(np.full(n, 256), pa.int32()), "height": pa.array(np.full(n, 256), pa.int32()),
            "reject": pa.nulls(n, pa.string()),
            "clip_score": pa.array(rng.uniform(0.2, 0.4, n), pa.float32()),
            "clip_image_emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 512),
        })
        pq.write_table(table, run / "shards" / f"part-{part:05d}.parquet", use_dictionary=["uid", "url", "caption"])
    return sum(p.stat().st_size for p in (run / "shards").glob("*.parquet")) / 1e6


def _jpeg(rng, kb: float) -> bytes:
    """A 256 px JPEG of shapes with noise, re-encoded until it is near ``kb``."""
    image = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(0, 200, 2)
        draw.ellipse([x, y, x + 50, y + 50], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    noise = rng.normal(0, 18, (256, 256, 3))
    pixels = np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8)
    best = b""
    for quality in range(95, 10, -5):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
        best = buffer.getvalue()
        if len(best) <= kb * 1024:
            break
    return best


def read_all(files: list[Path]) -> int:
    return sum(pq.read_table(f).num_rows for f in files)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
