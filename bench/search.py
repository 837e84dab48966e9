"""``curate search``'s index against brute force numpy on the same embeddings.

``--rows`` (200k) L2-normalised 512-d vectors shaped like CLIP image embeddings: a shared
offset direction (CLIP's embeddings sit in a narrow cone), a few thousand concept
clusters of uneven size (Zipf), within-cluster spread, plus exact and near-duplicate
copies (a crawl's re-uploads). Queries are ``--queries`` new draws from the same
distribution, not in the index. The baseline is what one writes without faiss: a float32
matrix product of a query batch with all rows and ``argpartition`` for the top 10. Ours
is ``curation.search.make_index`` with the kind ``curate index`` picks for this many rows
(``--kind auto``: HNSW past 100k) and, for reference, faiss's exact ``IndexFlatIP``.
Recall@10 is against the exact top 10 of the same queries; ``ratio`` = ours queries/s
over numpy's (both over the same query batch, same threads). ``build_cpu_s`` is the
process CPU time of the build (all threads): on a shared machine it moves less than the
wall time. ``--hnsw-m``, ``--ef-construction`` and ``--ef-search`` override the
defaults, for a sweep. ``growth_exponent``: the build over the first n/4, n/2 and n rows,
log2 of the last two times' ratio (1: linear).

    .venv/bin/python bench/search.py --rows 200000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivfpq"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="queries per numpy matrix product")
    parser.add_argument("--hnsw-m", type=int, help="HNSW M (default: curation.search.HNSW_M)")
    parser.add_argument("--ef-construction", type=int, help="HNSW efConstruction (default: HNSW_EF_CONSTRUCTION)")
    parser.add_argument("--ef-search", type=int, help="HNSW efSearch (default: HNSW_EF_SEARCH)")
    args = parser.parse_args()

    import faiss

    from clipcurate.curation import search
    from clipcurate.curation.search import EXACT_MAX, HNSW_MAX, make_index

    for name, value in (("HNSW_M", args.hnsw_m), ("HNSW_EF_CONSTRUCTION", args.ef_construction),
                        ("HNSW_EF_SEARCH", args.ef_search)):
        if value is not None:  # a sweep of the defaults: make_index reads the module's constants
            setattr(search, name, value)

    faiss.omp_set_num_threads(args.threads)
    vectors, queries = clip_like(args.rows, args.queries, args.dim)
    kind = args.kind if args.kind != "auto" else (
        "flat" if args.rows <= EXACT_MAX else "hnsw" if args.rows <= HNSW_MAX else "ivfpq")

    start = time.perf_counter()
    exact = brute_force(vectors, queries, 10, args.batch)
    numpy_s = time.perf_counter() - start

    start, cpu = time.perf_counter(), time.process_time()
    index, params = make_index(kind, vectors)
    build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    index.search(queries[:10], 10)  # warm
    start = time.perf_counter()
    _, ours = index.search(queries, 10)
    ours_s = time.perf_counter() - start

    flat, _ = make_index("flat", vectors)
    start = time.perf_counter()
    _, flat_ids = flat.search(queries, 10)
    flat_s = time.perf_counter() - start

    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ours, exact)]))
    flat_recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(flat_ids, exact)]))
    result = {
        "rows": args.rows, "dim": args.dim, "queries": args.queries, "threads": args.threads, "kind": kind,
        "params": params, "build_s": round(build_s, 2), "build_cpu_s": round(build_cpu_s, 2),
        "ours_qps": round(args.queries / ours_s, 1), "numpy_qps": round(args.queries / numpy_s, 1),
        "faiss_flat_qps": round(args.queries / flat_s, 1), "recall_at_10": round(recall, 4),
        "faiss_flat_recall_at_10": round(flat_recall, 4),
        "ratio": round(numpy_s / ours_s, 2), "meets_recall_0_95": recall >= 0.95,
    }
    growth = build_growth(kind, vectors)
    sizes = sorted(growth)
    result["growth_build_s"] = {str(n): round(t, 2) for n, t in growth.items()}
    result["growth_exponent"] = round(float(np.log2(growth[sizes[-1]] / growth[sizes[-2]])), 3)
    print(f"{kind} index over {args.rows:,} x {args.dim}: built in {build_s:.1f} s, {result['ours_qps']:,} queries/s "
          f"(numpy brute force {result['numpy_qps']:,}/s, faiss flat {result['faiss_flat_qps']:,}/s), "
          f"recall@10 {recall:.4f}")
    print("build at n, 2n, 4n rows: " + ", ".join(f"{n:,} rows {t:.2f} s" for n, t in growth.items())
          + f" (exponent {result['growth_exponent']}: 1 is linear; HNSW inserts cost log n each)")
    print(json.dumps(result))


def build_growth(kind: str, vectors: np.ndarray) -> dict[int, float]:
    """Build seconds of the same kind of index over the first n/4, n/2 and n rows (the
    n build timed again, so the three share the machine's state)."""
    from clipcurate.curation.search import make_index

    times = {}
    for n in (len(vectors) // 4, len(vectors) // 2, len(vectors)):
        start = time.perf_counter()
        make_index(kind, vectors[:n])
        times[n] = time.perf_counter() - start
    return times


def clip_like(rows: int, queries: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    clusters = max(50, rows // 100)
    offset = rng.standard_normal(dim)
    offset *= 1.2 / np.linalg.norm(offset)
    centres = rng.standard_normal((clusters, dim)) / np.sqrt(dim)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8  # uneven concept sizes (Zipf)
    weights /= weights.sum()

    def draw(n: int) -> np.ndarray:
        which = rng.choice(clusters, size=n, p=weights)
        spread = rng.uniform(0.5, 0.9, size=(n, 1))
        out = offset + centres[which] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
        return out

    vectors = draw(rows)
    copies = rng.choice(rows, size=rows // 20, replace=False)  # 5 % re-uploads: exact or nearly
    vectors[copies[: len(copies) // 2]] = vectors[copies[len(copies) // 2:][: len(copies) // 2]] + \
        0.02 * rng.standard_normal((len(copies) // 2, dim)) / np.sqrt(dim)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    asked = draw(queries)
    asked = (asked / np.linalg.norm(asked, axis=1, keepdims=True)).astype(np.float32)
    return vectors, asked


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, batch: int) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), batch):
        scores = queries[start:start + batch] @ vectors.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start:start + batch] = np.take_along_axis(top, order, axis=1)
    return out


if __name__ == "__main__":
    main()
