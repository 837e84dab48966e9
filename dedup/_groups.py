"""Grouping shared by the dedup stages: buckets -> verified links -> groups -> survivors.

Every dedup kind follows the same three passes (datatrove's MinHash dedup, NeMo
Curator's fuzzy workflow: signatures -> LSH buckets -> connected components):

1. ``link_buckets``: rows that share a bucket key are grouped across the cluster with
   Ray Data ``groupby(...).map_groups``; inside one bucket a kind-specific function
   returns the verified pairs, and the bucket emits a spanning star (member -> root)
   of its local components, so a bucket of k copies costs k rows, not k² pairs.
2. ``resolve``: union-find (scipy connected components) over all links on the driver.
3. The keep rule picks one survivor per group, deterministically: highest
   ``clip_score`` when that column exists (nulls last), then smallest uid. Every other
   member becomes ``duplicate_of=<survivor uid>``.

Each bucket is processed in uid order and the groups do not depend on which partition
a row came from, so the result is the same for any partitioning.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.stage import Stage, kept_mask, reject_rows

SCORE = "clip_score"

LINK_SCHEMA = pa.schema([("uid", pa.string()), ("score", pa.float64()), ("root", pa.string())])
DUPLICATES_SCHEMA = pa.schema([("uid", pa.string()), ("duplicate_of", pa.string())])

# pairs_fn(bucket sorted by uid) -> (i, j) row-index arrays of verified near-duplicates
PairsFn = Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]


def rank_columns(names) -> list[str]:
    """Columns the keep rule needs: uid, plus clip_score when the dataset has it."""
    return ["uid", SCORE] if SCORE in names else ["uid"]


def scores_of(table: pa.Table) -> np.ndarray:
    """clip_score as float64 with nulls as -inf (ranked last); all -inf when absent."""
    if SCORE not in table.column_names:
        return np.full(table.num_rows, -np.inf)
    col = pc.cast(table.column(SCORE), pa.float64()).fill_null(-np.inf)
    return col.to_numpy()


def keep_order(uids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices in keep-rule order: highest score first, then smallest uid."""
    return np.lexsort((uids, -scores))


def same_value_pairs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (row, first row with the same value) and the index of each distinct value's
    first row. Identical keys need no verification; only the firsts are compared."""
    _, first, inverse = np.unique(values, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    rows = np.arange(len(inverse))
    heads = first[inverse]
    dup = rows != heads
    return rows[dup], heads[dup], np.sort(first)


def link_buckets(ds, keys: list[str], pairs_fn: PairsFn):
    """Group ``ds`` by ``keys`` across the cluster; return the star links of each bucket
    (a pa.Table with LINK_SCHEMA) collected on the driver."""
    import ray

    def per_bucket(bucket: pa.Table) -> pa.Table:
        if bucket.num_rows < 2:
            return LINK_SCHEMA.empty_table()
        bucket = bucket.sort_by("uid")
        i, j = pairs_fn(bucket)
        return _star_links(bucket, np.asarray(i, np.int64), np.asarray(j, np.int64))

    partitions = max(1, min(200, 2 * int(ray.cluster_resources().get("CPU", 1))))
    grouped = group_by(ds, keys, partitions).map_groups(per_bucket, batch_format="pyarrow")
    tables = [t for t in ray.get(grouped.to_arrow_refs()) if t.num_rows]
    if not tables:
        return LINK_SCHEMA.empty_table()
    return pa.concat_tables([t.select(LINK_SCHEMA.names).cast(LINK_SCHEMA) for t in tables])


def group_by(ds, keys, partitions: int):
    """``ds.groupby`` with the sort-based pull shuffle on this dataset's own context.

    Ray's default shuffle starts aggregator actors per call (4-20 s here even for a few
    rows); the sort-based shuffle runs as plain tasks and is 10-50x faster at the sizes a
    dedup key column has. Only this derived dataset's context is changed."""
    from ray.data.context import ShuffleStrategy

    ds = ds.select_columns(ds.columns())
    ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return ds.groupby(keys, num_partitions=partitions)


def resolve(links: pa.Table) -> pa.Table:
    """Union-find over links, then the keep rule: a table (uid, duplicate_of) sorted by uid."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if links.num_rows == 0:
        return DUPLICATES_SCHEMA.empty_table()
    uid = links.column("uid").to_numpy(zero_copy_only=False).astype(str)
    root = links.column("root").to_numpy(zero_copy_only=False).astype(str)
    score = links.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    nodes, node_of_uid = np.unique(uid, return_inverse=True)
    node_of_root = np.searchsorted(nodes, root)  # every root also appears as a uid row
    node_score = np.full(len(nodes), -np.inf)
    node_score[node_of_uid] = score
    graph = coo_matrix((np.ones(len(uid), np.int8), (node_of_uid, node_of_root)), shape=(len(nodes),) * 2)
    _, component = connected_components(graph, directed=False)
    order = np.lexsort((nodes, -node_score, component))
    first = np.ones(len(order), dtype=bool)
    first[1:] = component[order][1:] != component[order][:-1]
    survivor_of_component = np.empty(component.max() + 1, dtype=nodes.dtype)
    survivor_of_component[component[order][first]] = nodes[order][first]
    survivor = survivor_of_component[component]
    dup = survivor != nodes
    return pa.table({"uid": nodes[dup].tolist(), "duplicate_of": survivor[dup].tolist()}, schema=DUPLICATES_SCHEMA)


class DuplicateLookup:
    """The fitted state of a dedup stage: sorted uids of non-survivors and their survivor.

    Plain numpy arrays (pickle to workers); lookups are a vectorised binary search.
    """

    def __init__(self, duplicates: pa.Table):
        duplicates = duplicates.sort_by("uid")
        self.uids = _as_bytes(duplicates.column("uid"))
        self.duplicate_of = _as_bytes(duplicates.column("duplicate_of"))

    def __len__(self) -> int:
        return len(self.uids)

    def find(self, uids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of uids that are duplicates, index into ``duplicate_of``)."""
        query = _as_bytes(uids)
        if len(self.uids) == 0 or len(query) == 0:
            return np.zeros(len(query), dtype=bool), np.zeros(len(query), dtype=np.int64)
        pos = np.searchsorted(self.uids, query)
        pos = np.minimum(pos, len(self.uids) - 1)
        return self.uids[pos] == query, pos

    def table(self) -> pa.Table:
        return pa.table(
            {"uid": [u.decode() for u in self.uids], "duplicate_of": [u.decode() for u in self.duplicate_of]},
            schema=DUPLICATES_SCHEMA,
        )

    def groups(self) -> int:
        return len(np.unique(self.duplicate_of))


def reject_duplicates(stage: Stage, batch: pa.Table, lookup: DuplicateLookup) -> pa.Table:
    """Reject kept rows listed in ``lookup`` with ``<label>:duplicate_of=<survivor uid>``."""
    if batch.num_rows == 0 or len(lookup) == 0:
        return batch
    found, pos = lookup.find(batch.column("uid"))
    mask = found & kept_mask(batch)
    if not mask.any():
        return batch
    prefix = stage.reason("duplicate_of=")
    reasons = np.full(batch.num_rows, None, dtype=object)
    reasons[mask] = [prefix + s.decode() for s in lookup.duplicate_of[pos[mask]]]
    return reject_rows(batch, mask, reasons)


def summary_of(lookup: DuplicateLookup) -> dict:
    return {"duplicates": len(lookup), "groups": lookup.groups()}


# ------------------------------------------------------------------ private helpers


def _star_links(bucket: pa.Table, i: np.ndarray, j: np.ndarray) -> pa.Table:
    """Local components of the verified pairs, as rows (member, score, smallest-uid root)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return LINK_SCHEMA.empty_table()
    n = bucket.num_rows
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    size = np.bincount(component, minlength=count)
    member = np.flatnonzero(size[component] > 1)
    root_of_component = np.full(count, n, dtype=np.int64)
    np.minimum.at(root_of_component, component, np.arange(n))  # rows are in uid order
    roots = root_of_component[component[member]]
    uid = bucket.column("uid")
    return pa.table(
        {
            "uid": uid.take(pa.array(member)),
            "score": pa.array(scores_of(bucket)[member]),
            "root": uid.take(pa.array(roots)),
        },
        schema=LINK_SCHEMA,
    )


def _as_bytes(values) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pc.cast(values, pa.binary()).to_pylist()
    return np.array(values, dtype="S") if len(values) else np.array([], dtype="S1")
