import numpy as np
import pyarrow as pa

from clipcurate.dedup.semantic import SemanticDedup, greedy_semdedup, split_oversize


def planted(n_base: int, dim: int, seed: int):
    """Unit vectors around a few topics, plus near copies (cosine > 0.99) of some."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(8, dim))
    base = topics[rng.integers(0, 8, n_base)] + rng.normal(size=(n_base, dim)) * 0.8
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies = base[: n_base // 3] + rng.normal(size=(n_base // 3, dim)) * 0.01
    points = np.concatenate([base, copies])
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def all_pairs_removed(points, uids, scores, eps):
    order = np.lexsort((np.array(uids), -np.array(scores)))
    removed, _ = greedy_semdedup(points[order].astype(np.float32), 1 - eps)
    return {uids[i] for i in order[removed]}


def test_near_copies_removed_in_keep_order(run_global, make_pool, reasons_of):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 32))
    a_copy = a + rng.normal(size=32) * 0.01
    a_far = a + rng.normal(size=32) * 0.5
    table = make_pool(
        ["u1", "u2", "u3", "u4", "u5"],
        embeddings=np.stack([v / np.linalg.norm(v) for v in (a, a_copy, b, a_far, a_copy)]),
        scores=[0.1, 0.9, 0.5, 0.5, 0.2],
    )
    out = run_global(SemanticDedup(eps=0.02, num_clusters=2), table)
    assert reasons_of(out) == {
        "u1": "dedup_semantic:duplicate_of=u2",  # u2 has the higher clip_score
        "u2": None,
        "u3": None,
        "u4": None,
        "u5": "dedup_semantic:duplicate_of=u2",
    }


def test_rows_without_embedding_are_kept(run_global, make_pool, reasons_of):
    emb = pa.array([[1.0, 0.0], None, [1.0, 0.0]], pa.list_(pa.float16(), 2))
    table = make_pool(["a", "b", "c"]).append_column("clip_image_emb", emb)
    out = run_global(SemanticDedup(), table)
    assert reasons_of(out) == {"a": None, "b": None, "c": "dedup_semantic:duplicate_of=a"}


def test_agrees_with_all_pairs_and_partitioning(run_global, make_pool):
    points = planted(600, 48, 1)
    uids = [f"u{i:04d}" for i in range(len(points))]
    scores = np.random.default_rng(2).random(len(points)).round(2)
    table = make_pool(uids, embeddings=points, scores=scores)
    stage = SemanticDedup(eps=0.03, cluster_size=100)
    one = run_global(stage, table, 1)
    eight = run_global(SemanticDedup(eps=0.03, cluster_size=100), table, 8)
    assert one.column("reject").to_pylist() == eight.column("reject").to_pylist()
    removed = {u for u, r in zip(uids, one.column("reject").to_pylist()) if r}
    # the all-pairs reference sees the same float16 values the stage reads
    f16 = points.astype(np.float16).astype(np.float32)
    expected = all_pairs_removed(f16 / np.linalg.norm(f16, axis=1, keepdims=True), uids, scores, 0.03)
    assert len(expected) >= 190
    assert len(removed & expected) / len(removed | expected) >= 0.97
    assert stage.summary()["clusters"] == 8


def test_split_oversize_bounds_parts():
    points = planted(900, 16, 3).astype(np.float32)
    parts = split_oversize(points, 100, seed=0)
    assert max(len(p) for p in parts) <= 100
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(points)))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # each part keeps the keep order
    assert [p.tolist() for p in parts] == [p.tolist() for p in split_oversize(points, 100, seed=0)]


def test_one_dense_cluster_is_split_and_still_dedups(run_global, make_pool):
    """A cluster over 2 x cluster_size (here: everything in one k-means cluster) is split
    before the all-pairs step; near copies are still found (the split misses few)."""
    points = planted(600, 48, 4)
    uids = [f"u{i:04d}" for i in range(len(points))]
    scores = np.random.default_rng(5).random(len(points)).round(2)
    out = run_global(SemanticDedup(eps=0.03, num_clusters=1, cluster_size=100), make_pool(uids, embeddings=points, scores=scores))
    removed = {u for u, r in zip(uids, out.column("reject").to_pylist()) if r}
    f16 = points.astype(np.float16).astype(np.float32)
    expected = all_pairs_removed(f16 / np.linalg.norm(f16, axis=1, keepdims=True), uids, scores, 0.03)
    overlap = len(removed & expected) / len(removed | expected)
    assert overlap >= 0.8
