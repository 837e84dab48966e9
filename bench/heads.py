"""clip_heads reusing stored embeddings vs a bare torch loop; image_clusters at scale.

1. Heads. Ours: ``ClipHeads`` on Arrow batches whose ``clip_image_emb`` (float16, as
   clip_score stores it) comes from the heads' model: column -> numpy -> normalise ->
   head -> score column -> threshold -> reject. Baseline: a bare loop over the same
   float16 numpy embeddings (to float32, normalise, head forward). Same head (LAION's
   aesthetic MLP shape, ViT-L/14 width 768, random weights: speed does not depend on
   them), batch size and threads. The two alternate block by block, best of
   ``--repeats`` per block. ``ratio`` = our rows/s / baseline rows/s.
2. image_clusters at ``--cluster-rows`` embeddings (default 200k, ViT-L/14 width): fit
   (faiss k-means, default k = rows / 128, on the driver, through a local Ray Dataset as
   the runner gives it) seconds, and rows/s of the assignment (``__call__``).

    .venv/bin/python bench/heads.py --rows 200000 --cluster-rows 200000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from clipcurate.filters.heads import ClipHeads  # noqa: E402
from clipcurate.filters.image_clusters import ImageClusters  # noqa: E402
from clipcurate.train.clip_model import model_fingerprint  # noqa: E402
from clipcurate.train.embedding_columns import MODEL_KEY  # noqa: E402
from clipcurate.train.heads import PUBLISHED, HeadNet, load_head  # noqa: E402

MODEL, PRETRAINED, DIM = "ViT-L-14", "openai", 768


def embeddings_table(n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, DIM)).astype(np.float16)
    column = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float16()), DIM)
    table = pa.table({"uid": [f"{i:032x}" for i in range(n)], "image": pa.nulls(n, pa.binary()),
                      "clip_image_emb": column, "reject": pa.nulls(n, pa.string())})
    fields = [f.with_metadata({MODEL_KEY: model_fingerprint(MODEL, PRETRAINED).encode()})
              if f.name == "clip_image_emb" else f for f in table.schema]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields)), matrix


def bench_heads(rows: int, batch: int, repeats: int, folder: str) -> dict:
    torch.manual_seed(0)
    path = os.path.join(folder, "aesthetic.pth")
    torch.save(HeadNet(list(PUBLISHED["laion_aesthetic"].layers)).state_dict(), path)
    table, matrix = embeddings_table(rows, 0)
    stage = ClipHeads(heads=[{"name": "aesthetic", "path": path, "format": "laion_aesthetic", "min_score": 0.0}])
    stage.ensure_setup()
    head = load_head(path, "laion_aesthetic")

    def ours(start: int) -> None:
        stage(table.slice(start, batch))

    def bare(start: int) -> None:
        with torch.inference_mode():
            x = torch.nn.functional.normalize(torch.from_numpy(matrix[start:start + batch].astype(np.float32)), dim=-1)
            head.net(x).reshape(-1).numpy()

    ours(0), bare(0)  # warm-up
    best = {"ours": 0.0, "bare": 0.0}
    for start in range(0, rows, batch):
        for name, fn in (("ours", ours), ("bare", bare)):
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                fn(start)
                times.append(time.perf_counter() - began)
            best[name] += min(times)
    return {"rows": rows, "batch_size": batch, "ours_rows_per_s": round(rows / best["ours"]),
            "bare_rows_per_s": round(rows / best["bare"]), "ratio": round(best["bare"] / best["ours"], 3)}


def bench_clusters(rows: int, clusters: int | None, folder: str) -> dict:
    import pyarrow.parquet as pq
    import ray

    table, matrix = embeddings_table(rows, 1)
    target = os.path.join(folder, "target.parquet")
    pq.write_table(table.select(["clip_image_emb"]).slice(0, 1000), target)
    stage = ImageClusters(model=MODEL, pretrained=PRETRAINED, target=target, num_clusters=clusters)
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    prepared = stage.prepare(table)
    began = time.perf_counter()
    stage.fit(ray.data.from_arrow(prepared))
    fit_s = time.perf_counter() - began
    began = time.perf_counter()
    for start in range(0, rows, 4096):
        stage(prepared.slice(start, 4096))
    apply_s = time.perf_counter() - began
    summary = stage.summary()
    return {"cluster_rows": rows, "clusters": summary["clusters"], "kmeans_rows": summary["kmeans_rows"],
            "fit_s": round(fit_s, 2), "assign_rows_per_s": round(rows / apply_s)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows through the heads (default: 200000)")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per call (default: 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many per block (default: 3)")
    parser.add_argument("--cluster-rows", type=int, default=200_000, help="embeddings for image_clusters "
                        "(default: 200000; 0 skips)")
    parser.add_argument("--clusters", type=int, default=None, help="k (default: the stage's, rows / 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        result = bench_heads(args.rows, args.batch_size, args.repeats, folder)
        print(f"heads: ours {result['ours_rows_per_s']:,} rows/s, bare torch {result['bare_rows_per_s']:,} rows/s, "
              f"ratio {result['ratio']}", flush=True)
        if args.cluster_rows:
            clusters = bench_clusters(args.cluster_rows, args.clusters, folder)
            print(f"image_clusters: {clusters['cluster_rows']:,} rows, k {clusters['clusters']:,}, fit "
                  f"{clusters['fit_s']} s, assignment {clusters['assign_rows_per_s']:,} rows/s", flush=True)
            result |= clusters
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
