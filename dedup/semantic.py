"""Semantic dedup (SemDeDup, Abbas et al. 2023, arXiv:2303.09540) on CLIP image embeddings.

Semantic duplicates (the same product shot on a new background, burst photos, memes
with another caption) sit very close in CLIP space though their pixels differ. SemDeDup
clusters the embeddings with k-means, then inside each cluster removes points whose
cosine similarity to a kept point exceeds 1 - eps; on LAION-440M it removed ~50% of the
data at ~0.5 pt ImageNet zero-shot cost. Clustering keeps the all-pairs work per cluster.

Cost stays linear in rows (issue 17): k-means is fit on a bounded sample (at most 256
points per centroid, faiss's ``max_points_per_centroid``) with at most ``max_clusters``
centroids, and a cluster larger than 2 x ``cluster_size`` (a dense region: near-identical
product shots, one meme template) is split by a random-projection tree (Dasgupta &
Freund 2008: halve at the median of a seeded random direction) until every part holds
at most that many rows, so the all-pairs step costs O(rows x 2 x cluster_size). A
duplicate pair that a split separates is missed, as one that k-means separates is.

Points are taken in keep-rule order (highest clip_score first, then smallest uid): the
first point is kept, and every later point within 1 - eps of a kept point is removed
as ``duplicate_of`` that kept point. k-means (spherical, k-means++ init, torch) is fit
on a deterministic uid-hash sample sorted by uid, and the per-cluster work sees each
cluster's rows in a fixed order, so the result does not depend on partitioning.

Against earlier releases (issue 16): the releases' embeddings (``clip_image_emb`` in their
shards; never recomputed here, that needs the clip_score stage's model) join the
clustering, and inside a cluster a release point is always kept: a new point within
1 - eps of one is ``duplicate_of_release`` it, the rest walk as above. Only new points
are compared (new x cluster, not cluster x cluster), and clusters without a new point
are skipped. The embeddings must come from the model the new run scores with: where
both sides name their model (the field metadata ``clip_score`` writes), a release whose
embeddings another model made is refused (distances across two models' spaces mean
nothing).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from clipcurate.dedup import _against, _groups
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.release import RELEASE_UID_PREFIX
from clipcurate.pipelines.stage import StageConfig, unit_hash
from clipcurate.train.embedding_columns import column_model, embedding_matrix, same_model

EMBEDDING = "clip_image_emb"
MAX_POINTS_PER_CENTROID = 256  # faiss's default: more sample points barely move a centroid


class SemanticDedupConfig(StageConfig):
    eps: float = Field(0.05, gt=0.0, lt=1.0)
    """Remove a point whose cosine similarity to a kept point is > 1 - eps."""
    num_clusters: int | None = Field(None, ge=1)
    """k of k-means; default: rows / cluster_size, at most max_clusters."""
    max_clusters: int = Field(100, ge=1)
    """Bound on the default k (k-means costs rows x k); larger clusters are split (module docstring)."""
    cluster_size: int = Field(1000, ge=1)
    """Typical cluster size; no cluster's all-pairs step sees more than 2 x this many rows."""
    kmeans_iterations: int = Field(20, ge=1)
    kmeans_sample: int = Field(100_000, ge=1)
    """At most this many rows (a uid-hash sample, and at most 256 per centroid) fit the centroids; all rows are
    assigned."""
    seed: int = 0


class SemanticDedup(_groups.DedupStage):
    """One survivor per semantic-duplicate set in CLIP space; the others get
    ``dedup_semantic:duplicate_of=<uid>`` (keep rule: highest clip_score, then uid)."""

    name = "dedup_semantic"
    Config = SemanticDedupConfig
    reads = ("uid", EMBEDDING)
    adds: dict[str, pa.DataType] = {}

    def __init__(self, config: SemanticDedupConfig | None = None, **params):
        super().__init__(config, **params)
        self._clusters = 0

    def fit(self, ds) -> None:
        cfg = self.config
        if _against.releases_of(self):
            _check_release_models(self, ds)
        ds = ds.select_columns([EMBEDDING, *_groups.rank_columns(ds.columns())])
        valid = lambda t: t.filter(t.column(EMBEDDING).is_valid())  # noqa: E731
        ds = ds.map_batches(valid, batch_format="pyarrow")
        ds, against = _against.with_releases(self, ds, [EMBEDDING], spec={}, stored=lambda r: True, derive=None,
                                             keep=valid)
        if against is not None:  # one column type on both sides (float16 and float32 releases alike)
            ds = ds.map_batches(_float32_embeddings, batch_format="pyarrow").union(
                against.map_batches(_float32_embeddings, batch_format="pyarrow"))
        ds = ds.materialize()
        rows = ds.count()
        if rows < 2:
            return
        k = min(rows, cfg.num_clusters or min(cfg.max_clusters, max(1, round(rows / cfg.cluster_size))))
        fraction = min(1.0, cfg.kmeans_sample / rows, MAX_POINTS_PER_CENTROID * k / rows)
        seed = cfg.seed

        def sample(table: pa.Table) -> pa.Table:
            draws = unit_hash(table.column("uid").to_pylist(), "semdedup", seed)
            return table.filter(pa.array(draws < fraction)).select(["uid", EMBEDDING])

        fit_rows = pa.concat_tables(_groups.collect(ds.map_batches(sample, batch_format="pyarrow"))).sort_by("uid")
        centroids = _spherical_kmeans(embeddings(fit_rows), k, cfg.kmeans_iterations, seed)
        self._clusters = len(centroids)

        def assign(table: pa.Table) -> pa.Table:
            similarity = embeddings(table).astype(np.float64) @ centroids.T
            return table.append_column("cluster", pa.array(similarity.argmax(1).astype(np.int32)))

        threshold = 1.0 - cfg.eps
        cap = 2 * cfg.cluster_size

        def per_cluster(cluster: pa.Table) -> pa.Table:
            if cluster.num_rows < 2:
                return _groups.DUPLICATES_SCHEMA.empty_table()
            uids = cluster.column("uid").to_numpy(zero_copy_only=False).astype(str)
            pinned = np.char.startswith(uids, RELEASE_UID_PREFIX)  # an earlier release's point: always kept
            if pinned.all():
                return _groups.DUPLICATES_SCHEMA.empty_table()
            order = _groups.keep_order(uids, _groups.scores_of(cluster))
            uids, points, pinned = uids[order], embeddings(cluster)[order], pinned[order]
            removed_uids, kept_uids = [], []
            for part in split_oversize(points, cap, seed):  # each part in keep order
                removed, kept_by = greedy_semdedup(points[part], threshold, pinned=pinned[part])
                removed_uids.append(uids[part][removed])
                kept_uids.append(uids[part][kept_by[removed]])
            return pa.table(
                {"uid": np.concatenate(removed_uids).tolist(), "duplicate_of": np.concatenate(kept_uids).tolist()},
                schema=_groups.DUPLICATES_SCHEMA,
            )

        assigned = ds.map_batches(assign, batch_format="pyarrow")
        with _groups.sort_shuffle(assigned):
            grouped = assigned.groupby("cluster", num_partitions=max(1, min(k, 200)))
            removed = grouped.map_groups(per_cluster, batch_format="pyarrow")
            tables = [t.cast(_groups.DUPLICATES_SCHEMA) for t in _groups.collect(removed)]
        duplicates = pa.concat_tables(tables) if tables else _groups.DUPLICATES_SCHEMA.empty_table()
        self._duplicates = _groups.DuplicateLookup(duplicates)

    def summary(self) -> dict:
        return {"clusters": self._clusters, "eps": self.config.eps, **super().summary()}


def _check_release_models(stage: SemanticDedup, ds) -> None:
    """Refuse a release whose embeddings another model made than the pool's (each side's
    model is the field metadata of its column: the pool's from its first block, read
    before ``select_columns``, which drops field metadata)."""
    first = next(iter(ds.limit(1).iter_batches(batch_format="pyarrow")), None)
    ours = column_model(first.schema, EMBEDDING) if first is not None else None
    for release in _against.releases_of(stage):
        schema = release.shard_schema()
        theirs = column_model(schema, EMBEDDING) if schema is not None else None
        if ours and theirs and not same_model(ours, theirs):
            raise UserError(f"{stage.label}: release {release.location} holds {EMBEDDING} from another model "
                            f"({theirs.split('|')[0]}) than this run's ({ours.split('|')[0]}); cosine distances "
                            f"across two models mean nothing: score this run with the release's model, or leave "
                            f"dedup_semantic out of the --against run")


def embeddings(table: pa.Table, column: str = EMBEDDING) -> np.ndarray:
    """An embedding column as a float32 (rows, dim) matrix, L2-normalised."""
    return embedding_matrix(table.column(column), normalise=True)


def greedy_semdedup(points: np.ndarray, threshold: float, chunk: int = 2048, pinned: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Walk ``points`` (rows in keep order): keep a point unless it is > threshold cosine
    to an earlier kept point. Returns (removed mask, index of the kept point that removed it).

    ``pinned`` (the points of earlier releases, first in keep order): always kept; every
    other point within the threshold of one is removed by it (the most similar), and
    only the others walk. Costs rows x (pinned + others) for the others only."""
    if pinned is not None and pinned.any():
        return _greedy_with_pinned(points, threshold, chunk, pinned)
    n = len(points)
    src, dst = [], []
    for start in range(0, n, chunk):
        sim = points[start : start + chunk] @ points.T
        i, j = np.nonzero(sim > threshold)
        i += start
        later = j > i
        src.append(i[later])
        dst.append(j[later])
    src, dst = np.concatenate(src), np.concatenate(dst)
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    removed = np.zeros(n, dtype=bool)
    kept_by = np.full(n, -1, dtype=np.int64)
    starts = np.searchsorted(src, np.arange(n))
    ends = np.searchsorted(src, np.arange(n), side="right")
    for point in np.unique(src):  # only points with later neighbours; inherently sequential
        if removed[point]:
            continue
        neighbours = dst[starts[point] : ends[point]]
        neighbours = neighbours[~removed[neighbours]]
        removed[neighbours] = True
        kept_by[neighbours] = point
    return removed, kept_by


def _greedy_with_pinned(points: np.ndarray, threshold: float, chunk: int, pinned: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    n = len(points)
    removed = np.zeros(n, dtype=bool)
    kept_by = np.full(n, -1, dtype=np.int64)
    fixed, free = np.flatnonzero(pinned), np.flatnonzero(~pinned)
    for start in range(0, len(free), chunk):
        rows = free[start : start + chunk]
        similarity = points[rows] @ points[fixed].T
        nearest = similarity.argmax(1)
        near = similarity[np.arange(len(rows)), nearest] > threshold
        removed[rows[near]] = True
        kept_by[rows[near]] = fixed[nearest[near]]
    rest = free[~removed[free]]
    if len(rest) > 1:
        rest_removed, rest_kept_by = greedy_semdedup(points[rest], threshold, chunk)
        removed[rest[rest_removed]] = True
        kept_by[rest[rest_removed]] = rest[rest_kept_by[rest_removed]]
    return removed, kept_by


def _float32_embeddings(table: pa.Table) -> pa.Table:
    """The embedding column as list<float32> (a release may store another float width)."""
    column = pa.chunked_array([chunk.cast(pa.list_(pa.float32())) for chunk in table.column(EMBEDDING).chunks],
                              pa.list_(pa.float32()))
    return table.set_column(table.schema.get_field_index(EMBEDDING), EMBEDDING, column)


def split_oversize(points: np.ndarray, cap: int, seed: int) -> list[np.ndarray]:
    """Sorted index sets of at most ``cap`` points covering ``points``: a random-projection
    tree (Dasgupta & Freund 2008) that halves a part at the median of its projection on a
    seeded random direction. Deterministic for a given input order; O(n log(n / cap))."""
    if len(points) <= cap:
        return [np.arange(len(points))]
    rng = np.random.default_rng(seed)
    todo, parts = [np.arange(len(points))], []
    while todo:
        part = todo.pop()
        if len(part) <= cap:
            parts.append(part)
            continue
        projection = points[part].astype(np.float64) @ rng.standard_normal(points.shape[1])
        by_projection = np.argsort(projection, kind="stable")
        half = len(part) // 2
        todo += [np.sort(part[by_projection[:half]]), np.sort(part[by_projection[half:]])]
    return parts


def _spherical_kmeans(points: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding; deterministic for a given input order."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    n = len(x)
    k = min(k, n)
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    distance = (1.0 - x @ x[chosen[0]]).clamp_min(0)
    for _ in range(1, k):
        weights = distance.double()
        if float(weights.sum()) <= 0:
            break
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        distance = torch.minimum(distance, (1.0 - x @ x[chosen[-1]]).clamp_min(0))
    centroids = x[chosen].clone()
    for _ in range(iterations):
        assignment = (x @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=len(centroids))
        updated = torch.nn.functional.normalize(sums, dim=1)
        new = torch.where((counts > 0)[:, None], updated, centroids)
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids.double().numpy()
