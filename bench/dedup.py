"""Dedup suite benchmark: a pool with known injected duplicates, each dedup kind against
a brute-force ground truth computed in the same run, plus throughput.

* captions (dedup_minhash, ``match: caption``): >= 50k captions, 1-3-word edits
  injected; ground truth is the exact Jaccard of every pair at >= threshold (an exact
  all-pairs similarity join with prefix filtering, Bayardo et al. 2007). Baseline:
  datasketch MinHashLSH in one process at the same threshold (no verification).
* image-text pairs (dedup_minhash, default ``match: pair``): distinct images, half of
  them under a few templated captions, plus reposts (caption edited or not, image
  re-encoded, resized or copied); ground truth: pairs at caption Jaccard >= threshold
  *and* pHash distance <= image_max_distance, all pairs. Also the share of the clean
  pairs (never reposted) each mode removes: caption mode takes the templates.
* images (dedup_exact, dedup_perceptual): smooth synthetic images with exact copies,
  same pixels in another container, JPEG re-encodes, resizes and small crops; ground
  truth: the injected labels and all-pairs Hamming distance of the pHashes.
* embeddings (dedup_semantic): >= 20k planted CLIP-like embeddings; reference is the
  same greedy keep-rule walk over all pairs (no clustering).

Run: ``.venv/bin/python bench/dedup.py [--captions 50000 --pairs 4000 --images 2000 --embeddings 20000]``.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time

# this file is named like the ``dedup`` package: run as a script, its own folder must
# not shadow the package on sys.path
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import numpy as np
import pyarrow as pa
from PIL import Image

from clipcurate.dedup.exact import ExactDedup
from clipcurate.dedup.minhash import MinHashDedup
from clipcurate.dedup.perceptual import PerceptualDedup, hamming
from clipcurate.dedup.semantic import SemanticDedup


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=int, default=50_000)
    parser.add_argument("--pairs", type=int, default=4_000, help="distinct image-text pairs (before reposts)")
    parser.add_argument("--images", type=int, default=2_000, help="distinct base images")
    parser.add_argument("--embeddings", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    result = {}
    result["minhash"] = bench_captions(args.captions, args.seed)
    result["minhash_pairs"] = bench_pairs(args.pairs, args.seed)
    result.update(bench_images(args.images, args.seed))
    result["semantic"] = bench_embeddings(args.embeddings, args.seed)
    result["ok"] = {
        "minhash_recall_precision_ge_0.95": result["minhash"]["pair_recall"] >= 0.95
        and result["minhash"]["pair_precision"] >= 0.95,
        "minhash_pairs_recall_precision_ge_0.95": result["minhash_pairs"]["pair_recall"] >= 0.95
        and result["minhash_pairs"]["pair_precision"] >= 0.95,
        "minhash_pairs_clean_removed_le_0.01": result["minhash_pairs"]["clean_removed"]["pair"] <= 0.01,
        "perceptual_recall_reencode_resize_ge_0.95": min(
            result["perceptual"]["recall"]["jpeg"], result["perceptual"]["recall"]["resize"]
        )
        >= 0.95,
        "semantic_overlap_ge_0.95": result["semantic"]["removed_overlap"] >= 0.95,
    }
    ray.shutdown()
    print(json.dumps(result))
    return 0


# ------------------------------------------------------------------------ the runner


def run_stage(stage, table: pa.Table, batch_size: int = 2048) -> tuple[pa.Table, dict]:
    """The runner's sequence for a global stage on Ray Data: prepare (streaming), fit on
    kept rows, apply; returns the output table and wall times."""
    import ray

    ds = ray.data.from_arrow(table).repartition(8)
    t0 = time.perf_counter()
    prepared = ds.map_batches(stage.prepare, batch_format="pyarrow", batch_size=batch_size).materialize()
    t1 = time.perf_counter()
    stage.fit(prepared)
    t2 = time.perf_counter()
    applied = prepared.map_batches(stage, batch_format="pyarrow", batch_size=batch_size)
    out = pa.concat_tables(ray.get(applied.to_arrow_refs())).sort_by("uid")
    t3 = time.perf_counter()
    rows = table.num_rows
    times = {"prepare_s": t1 - t0, "fit_s": t2 - t1, "apply_s": t3 - t2, "samples_per_s": rows / (t3 - t0)}
    return out, {k: round(v, 2) for k, v in times.items()}


def survivors(out: pa.Table) -> dict[str, str]:
    rejects = out.column("reject").to_pylist()
    return {u: (r.split("=", 1)[1] if r else u) for u, r in zip(out.column("uid").to_pylist(), rejects)}


def component_pairs_metrics(true_i, true_j, uids, group_of: dict[str, str]) -> dict:
    """Recall: true pairs that share a group. Precision: pairs sharing a group that are
    connected in the ground-truth graph (union-find over true pairs)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(uids)
    graph = coo_matrix((np.ones(len(true_i)), (true_i, true_j)), shape=(n, n))
    _, truth = connected_components(graph, directed=False)
    group = np.array([group_of[u] for u in uids])
    recall = float(np.mean(group[true_i] == group[true_j])) if len(true_i) else 1.0
    _, group_id = np.unique(group, return_inverse=True)
    same_group_pairs = _pairs_by_label(group_id)
    correct = _pairs_by_label(group_id * n + truth)  # pairs sharing group and truth component
    precision = correct / same_group_pairs if same_group_pairs else 1.0
    return {"pair_recall": round(recall, 4), "pair_precision": round(precision, 4), "true_pairs": int(len(true_i))}


def removed_metrics(removed: set, expected: set) -> dict:
    hit = len(removed & expected)
    return {
        "removed": len(removed),
        "removed_expected": len(expected),
        "removed_precision": round(hit / len(removed), 4) if removed else 1.0,
        "removed_recall": round(hit / len(expected), 4) if expected else 1.0,
    }


def _pairs_by_label(labels: np.ndarray) -> int:
    counts = np.unique(labels, return_counts=True)[1]
    return int((counts * (counts - 1) // 2).sum())


# ------------------------------------------------------------------------- captions


def make_captions(count: int, seed: int) -> tuple[list[str], int]:
    rng = np.random.default_rng(seed)
    syllables = [a + b for a in "bcdfghklmnprstvz" for b in ("a", "e", "i", "o", "u", "ar", "en", "ol")]
    vocabulary = sorted({"".join(rng.choice(syllables, rng.integers(2, 4))) for _ in range(30_000)})
    common = ["a", "the", "of", "with", "and", "photo", "in", "for", "on", "image"]
    base_count = int(count * 0.8)
    texts = []
    for _ in range(base_count):
        words = list(rng.choice(vocabulary, rng.integers(6, 17)))
        for _ in range(rng.integers(0, 4)):
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(common)))
        texts.append(" ".join(words))
    for _ in range(count - base_count):  # 1-3-word edits of a base caption
        words = texts[int(rng.integers(base_count))].split(" ")
        for _ in range(rng.integers(1, 4)):
            edit = rng.integers(3)
            position = int(rng.integers(len(words)))
            if edit == 0:
                words[position] = str(rng.choice(vocabulary))
            elif edit == 1 and len(words) > 2:
                del words[position]
            else:
                words.insert(position, str(rng.choice(vocabulary)))
        texts.append(" ".join(words))
    return texts, base_count


def exact_jaccard_pairs(sets: list[set[str]], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs with Jaccard >= threshold, exactly (prefix-filter candidates, then verify)."""
    from scipy.sparse import csr_matrix

    vocabulary: dict[str, int] = {}
    ids = [[vocabulary.setdefault(s, len(vocabulary)) for s in shingle_set] for shingle_set in sets]
    frequency = np.zeros(len(vocabulary), np.int64)
    for row in ids:
        frequency[row] += 1
    rank = np.argsort(np.argsort(frequency, kind="stable"), kind="stable")  # rarest first
    prefix_cols, prefix_ptr, full_cols, full_ptr = [], [0], [], [0]
    for row in ids:
        ordered = sorted(row, key=lambda t: rank[t])
        keep = len(ordered) - math.ceil(threshold * len(ordered)) + 1
        prefix_cols.extend(ordered[:keep])
        prefix_ptr.append(len(prefix_cols))
        full_cols.extend(row)
        full_ptr.append(len(full_cols))
    n, v = len(sets), len(vocabulary)
    prefix = csr_matrix((np.ones(len(prefix_cols)), prefix_cols, prefix_ptr), shape=(n, v))
    full = csr_matrix((np.ones(len(full_cols)), full_cols, full_ptr), shape=(n, v))
    candidates = (prefix @ prefix.T).tocoo()
    keep = candidates.row < candidates.col
    i, j = candidates.row[keep], candidates.col[keep]
    sizes = np.diff(full.indptr)
    inter = np.asarray(full[i].multiply(full[j]).sum(axis=1)).ravel()
    similar = inter >= threshold * (sizes[i] + sizes[j] - inter) - 1e-9
    return i[similar].astype(np.int64), j[similar].astype(np.int64)


def bench_captions(count: int, seed: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    texts, _ = make_captions(count, seed)
    uids = [f"c{i:07d}" for i in range(count)]
    scores = np.random.default_rng(seed + 1).random(count).astype(np.float32)
    table = pa.table({"uid": uids, "caption": texts, "clip_score": scores, "reject": pa.nulls(count, pa.string())})

    stage = MinHashDedup(match="caption")
    out, times = run_stage(stage, table)
    threshold = stage.config.threshold

    t0 = time.perf_counter()
    sets = [stage.shingles(t) for t in texts]
    true_i, true_j = exact_jaccard_pairs(sets, threshold)
    brute_s = time.perf_counter() - t0

    metrics = component_pairs_metrics(true_i, true_j, uids, survivors(out))
    removed = {u for u, r in zip(out.column("uid").to_pylist(), out.column("reject").to_pylist()) if r}
    metrics.update(removed_metrics(removed, keep_rule_removed(true_i, true_j, uids, scores)))

    # baseline: datasketch's in-memory MinHashLSH at the same threshold, one process
    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=stage.config.num_perm)
    sketches = MinHash.bulk([[s.encode() for s in shingle_set] for shingle_set in sets], num_perm=stage.config.num_perm)
    with lsh.insertion_session() as session:
        for uid, sketch in zip(uids, sketches):
            session.insert(uid, sketch)
    index = {u: k for k, u in enumerate(uids)}
    base_i, base_j = [], []
    for k, sketch in enumerate(sketches):
        for other in lsh.query(sketch):
            if index[other] > k:
                base_i.append(k)
                base_j.append(index[other])
    baseline_s = time.perf_counter() - t0
    base_pairs = set(zip(base_i, base_j))
    true_pairs = set(zip(true_i.tolist(), true_j.tolist()))
    baseline = {
        "pair_recall": round(len(base_pairs & true_pairs) / max(1, len(true_pairs)), 4),
        "pair_precision": round(len(base_pairs & true_pairs) / max(1, len(base_pairs)), 4),
        "samples_per_s": round(count / baseline_s, 1),
    }
    result = {
        "rows": count,
        "bands": stage.bands,
        "rows_per_band": stage.rows,
        **metrics,
        **times,
        "brute_force_s": round(brute_s, 2),
        "baseline_datasketch_lsh": baseline,
        "ratio": round(times["samples_per_s"] / baseline["samples_per_s"], 3),
    }
    print("minhash captions:", json.dumps(result))
    return result


def bench_pairs(count: int, seed: int) -> dict:
    """Image-text pairs: templated captions on distinct images are clean; reposts of a
    pair (caption edited or not, image re-encoded/resized/copied) are duplicates."""
    rng = np.random.default_rng(seed + 4)
    texts, _ = make_captions(count, seed + 4)
    templates = [" ".join(t.split()[:6]) + " online, free shipping" for t in texts[:20]]
    texts = [templates[k % len(templates)] if k % 2 else texts[k] for k in range(count)]
    pixels = [base_image(rng) for _ in range(count)]
    images = [encode(p) for p in pixels]
    reposts = rng.integers(0, count, count // 4)
    for k in reposts:
        words = texts[k].split(" ")
        for _ in range(rng.integers(0, 2)):
            words[int(rng.integers(len(words)))] = "edited"
        texts.append(" ".join(words))
        images.append(variant(pixels[k], str(rng.choice(["copy", "jpeg", "resize"])), rng))
    n = len(texts)
    uids = [f"t{i:07d}" for i in range(n)]
    scores = np.random.default_rng(seed + 5).random(n).astype(np.float32)
    table = pa.table({"uid": uids, "caption": texts, "image": images, "clip_score": scores,
                      "reject": pa.nulls(n, pa.string())})

    stage = MinHashDedup()
    out, times = run_stage(stage, table, batch_size=256)
    radius = stage.config.image_max_distance
    hashes = out.column("phash").to_numpy(zero_copy_only=False).astype(np.uint64)  # out is sorted by uid, as rows
    t0 = time.perf_counter()
    text_i, text_j = exact_jaccard_pairs([stage.shingles(t) for t in texts], stage.config.threshold)
    near = hamming(hashes[text_i], hashes[text_j]) <= radius
    true_i, true_j = text_i[near], text_j[near]
    brute_s = time.perf_counter() - t0
    metrics = component_pairs_metrics(true_i, true_j, uids, survivors(out))

    caption_out, _ = run_stage(MinHashDedup(match="caption"), table, batch_size=256)
    clean = np.setdiff1d(np.arange(count), reposts)  # pairs never reposted: no true duplicate
    clean_removed = {
        mode: round(float(o.column("reject").is_valid().to_numpy(zero_copy_only=False)[clean].mean()), 4)
        for mode, o in (("pair", out), ("caption", caption_out))
    }
    result = {
        "rows": n,
        "image_max_distance": radius,
        **metrics,
        "caption_only_pairs": int(len(text_i)),
        "clean_removed": clean_removed,
        **times,
        "brute_force_s": round(brute_s, 2),
    }
    print("minhash image-text pairs:", json.dumps(result))
    return result


def keep_rule_removed(true_i, true_j, uids, scores) -> set[str]:
    """Rows the keep rule removes when groups are the ground-truth components."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(uids)
    _, component = connected_components(coo_matrix((np.ones(len(true_i)), (true_i, true_j)), shape=(n, n)), directed=False)
    order = np.lexsort((np.array(uids), -np.asarray(scores, np.float64), component))
    first = np.ones(n, dtype=bool)
    first[1:] = component[order][1:] != component[order][:-1]
    return {uids[k] for k in order[~first]}


# --------------------------------------------------------------------------- images


def base_image(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """Smooth noise plus a gradient and a shape: varied, and stable under re-encoding."""
    small = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC)).astype(np.float32)
    ramp = np.linspace(0, rng.uniform(-60, 60), size)[None, :, None]
    pixels = np.clip(pixels + ramp, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    x, y = rng.integers(0, size // 2, 2)
    draw.ellipse([int(x), int(y), int(x + size // 3), int(y + size // 3)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return np.asarray(image)


def encode(pixels: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **save)
    return buffer.getvalue()


def make_images(count: int, seed: int):
    """Base images plus one injected variant each; returns rows (uid, image, kind, base)."""
    rng = np.random.default_rng(seed)
    kinds = ["copy", "same_pixels", "jpeg", "resize", "crop"]
    rows = []
    for b in range(count):
        pixels = base_image(rng)
        rows.append((f"i{b:06d}a", encode(pixels), "base", b))
        kind = kinds[b % len(kinds)]
        rows.append((f"i{b:06d}b", variant(pixels, kind, rng), kind, b))
    return rows


def variant(pixels: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """A copy of an image as a crawl meets it again."""
    if kind == "copy":
        return encode(pixels)
    if kind == "same_pixels":
        return encode(pixels, "BMP")
    if kind == "jpeg":
        return encode(pixels, "JPEG", quality=int(rng.choice([30, 50, 75, 90])))
    if kind == "resize":
        side = int(rng.choice([48, 64, 144, 192]))
        return encode(np.asarray(Image.fromarray(pixels).resize((side, side), Image.LANCZOS)))
    margin = int(rng.integers(2, 5))  # 2-5% of each side
    return encode(pixels[margin:-margin, margin:-margin])


def bench_images(count: int, seed: int) -> dict:
    rows = make_images(count, seed)
    uids = [r[0] for r in rows]
    kinds = np.array([r[2] for r in rows])
    bases = np.array([r[3] for r in rows])
    n = len(rows)
    scores = np.random.default_rng(seed + 2).random(n).astype(np.float32)
    table = pa.table(
        {"uid": uids, "image": [r[1] for r in rows], "clip_score": scores, "reject": pa.nulls(n, pa.string())}
    )
    results = {}

    exact, exact_times = run_stage(ExactDedup(), table, batch_size=256)
    group = survivors(exact)
    same = np.array([group[uids[k]] == group[uids[k - 1]] if kinds[k] != "base" else False for k in range(n)])
    recall = {kind: round(float(same[kinds == kind].mean()), 4) for kind in ("copy", "same_pixels", "jpeg", "resize", "crop")}
    removed = {u for u, r in zip(exact.column("uid").to_pylist(), exact.column("reject").to_pylist()) if r}
    results["exact"] = {"rows": n, "recall": recall, "removed": len(removed), **exact_times}
    print("exact images:", json.dumps(results["exact"]))

    stage = PerceptualDedup()
    out, times = run_stage(stage, table, batch_size=256)
    group = survivors(out)
    same = np.array([group[uids[k]] == group[uids[k - 1]] if kinds[k] != "base" else False for k in range(n)])
    recall = {kind: round(float(same[kinds == kind].mean()), 4) for kind in ("copy", "same_pixels", "jpeg", "resize", "crop")}

    hashes = out.column("phash").to_numpy(zero_copy_only=False).astype(np.uint64)  # out is sorted by uid, as rows
    t0 = time.perf_counter()
    true_i, true_j = [], []
    for start in range(0, n, 1024):
        near = hamming(hashes[start : start + 1024, None], hashes[None, :]) <= stage.config.max_distance
        i, j = np.nonzero(near)
        i += start
        keep = i < j
        true_i.append(i[keep])
        true_j.append(j[keep])
    true_i, true_j = np.concatenate(true_i), np.concatenate(true_j)
    brute_s = time.perf_counter() - t0
    metrics = component_pairs_metrics(true_i, true_j, uids, group)
    injected = bases[true_i] == bases[true_j]
    results["perceptual"] = {
        "rows": n,
        "max_distance": stage.config.max_distance,
        "recall": recall,
        "vs_all_pairs_hamming": metrics,
        "all_pairs_within_radius_not_injected": int((~injected).sum()),
        **times,
        "brute_force_all_pairs_s": round(brute_s, 2),
        "ratio": round(brute_s / times["fit_s"], 3),
    }
    print("perceptual images:", json.dumps(results["perceptual"]))
    return results


# ----------------------------------------------------------------------- embeddings


def make_embeddings(count: int, dim: int, seed: int) -> np.ndarray:
    """Topic mixture (like CLIP's anisotropic space) plus near copies at varied distances."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(64, dim))
    base_count = int(count * 0.75)
    base = topics[rng.integers(0, 64, base_count)] + rng.normal(size=(base_count, dim)) * 1.2
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    source = rng.integers(0, base_count, count - base_count)
    noise = rng.uniform(0.005, 0.03, (len(source), 1)) * rng.normal(size=(len(source), dim))
    copies = base[source] + noise
    points = np.concatenate([base, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    return points[rng.permutation(count)]


def all_pairs_greedy(points: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Reference SemDeDup without clustering: walk rows in keep order over all pairs."""
    import torch

    x = torch.from_numpy(points[order])
    n = len(x)
    neighbours = [[] for _ in range(n)]
    for start in range(0, n, 2048):
        sim = x[start : start + 2048] @ x.T
        i, j = torch.nonzero(sim > threshold, as_tuple=True)
        i = i + start
        for a, b in zip(i.tolist(), j.tolist()):
            if b > a:
                neighbours[a].append(b)
    removed = np.zeros(n, dtype=bool)
    for a in range(n):
        if not removed[a]:
            for b in neighbours[a]:
                removed[b] = True
    return order[removed]


def bench_embeddings(count: int, seed: int, dim: int = 256) -> dict:
    points = make_embeddings(count, dim, seed).astype(np.float16)
    uids = [f"e{i:07d}" for i in range(count)]
    scores = np.random.default_rng(seed + 3).random(count).astype(np.float32)
    table = pa.table(
        {
            "uid": uids,
            "clip_image_emb": pa.FixedSizeListArray.from_arrays(pa.array(points.reshape(-1)), dim),
            "clip_score": scores,
            "reject": pa.nulls(count, pa.string()),
        }
    )
    stage = SemanticDedup()
    out, times = run_stage(stage, table)
    removed = {u for u, r in zip(out.column("uid").to_pylist(), out.column("reject").to_pylist()) if r}

    t0 = time.perf_counter()
    x = points.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = np.lexsort((np.array(uids), -scores.astype(np.float64)))
    expected = {uids[k] for k in all_pairs_greedy(x, order, 1 - stage.config.eps)}
    brute_s = time.perf_counter() - t0
    result = {
        "rows": count,
        "dim": dim,
        "clusters": stage.summary()["clusters"],
        "removed_overlap": round(len(removed & expected) / max(1, len(removed | expected)), 4),
        **removed_metrics(removed, expected),
        **times,
        "all_pairs_s": round(brute_s, 2),
        "ratio": round(brute_s / times["fit_s"], 3),
    }
    print("semantic embeddings:", json.dumps(result))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
