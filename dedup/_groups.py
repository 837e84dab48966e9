"""Grouping shared by the dedup stages: buckets -> verified links -> groups -> survivors.

Every dedup kind follows the same three passes (datatrove's MinHash dedup, NeMo
Curator's fuzzy workflow: signatures -> LSH buckets -> connected components):

1. ``link_buckets``: rows that share a bucket key meet in one hash shard (Ray Data
   ``groupby`` on the shard id, ``map_groups`` once per shard); the shard finds its
   buckets with one sort and verifies each distinct value against a bounded set of the
   bucket's members (``value_pairs``: its first ``REPRESENTATIVES`` in a per-bucket
   pseudo-random order, and its predecessor), so a bucket of k distinct near-identical
   values costs at most (REPRESENTATIVES + 1)·k checks, not k²/2; the union over the
   LSH bands (each band orders its buckets differently) restores what one bucket's
   star misses. It emits a spanning star (member -> root) of its local components.
2. ``resolve``: union-find (scipy connected components) on the driver, folding the
   shards' stars as they arrive into one star link per grouped row, so the driver holds
   O(rows in a group), never O(links) or O(comparisons) (docs/dedup.md says why not a
   distributed method).
3. The keep rule picks one survivor per group, deterministically: highest
   ``clip_score`` when that column exists (nulls last), then smallest uid. Every other
   member becomes ``duplicate_of=<survivor uid>``.

Each bucket is processed in uid order and the groups do not depend on which partition
a row came from, so the result is the same for any partitioning.

Against earlier releases (issue 16, ``dedup/_against.py``): the releases' rows join the
buckets with a prefixed uid and a keep-rule score of +inf, so a group holding a release
row keeps it and its new members become ``duplicate_of_release=<earlier uid>``. Only
release rows whose bucket code some new row has (a bitset of the new rows' codes,
false positives only) are shuffled, and only buckets holding a new row are verified, so
the fit costs the new pool plus the release rows it collides with, not the release.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.pipelines.release import NO_CONTEXT, RELEASE_UID_PREFIX
from clipcurate.pipelines.stage import GlobalStage, Stage, ensure_columns, kept_mask, reject_rows

SCORE = "clip_score"

LINK_SCHEMA = pa.schema([("uid", pa.string()), ("score", pa.float64()), ("root", pa.string())])
# a shard's output: its star links, plus one row with a null uid that carries its comparison count
SHARD_SCHEMA = LINK_SCHEMA.append(pa.field("comparisons", pa.int64()))
BUCKET_CODE = "_bucket_code"  # uint64 of a row's bucket key, added before the shuffle
REPRESENTATIVES = 4  # bucket members every member is verified against (plus its predecessor)
DUPLICATES_SCHEMA = pa.schema([("uid", pa.string()), ("duplicate_of", pa.string())])

# pairs_fn(shard sorted by keys then uid, run starts, run sizes) -> (i, j, comparisons): verified row
# pairs and how many candidate pairs were checked to find them
PairsFn = Callable[[pa.Table, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, int]]


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


def link_buckets(ds, keys: list[str], pairs_fn: PairsFn, shards: int | None = None, against=None
                 ) -> tuple[pa.Table, int]:
    """Group rows that share the bucket ``keys`` across the cluster; return the duplicates
    (DUPLICATES_SCHEMA, after union-find and the keep rule) and how many candidate pairs
    were verified.

    ``against``: rows of earlier releases, with the columns of ``ds`` (``_against.release_rows``);
    only those in a bucket with a row of ``ds`` are grouped, and the duplicates returned
    are rows of ``ds`` only (their survivor may be a release row, by its prefixed uid).

    Buckets are spread over ``shards`` hash shards (Ray Data groupby on the shard id), and
    each shard finds its buckets with one vectorised sort, so the per-group call overhead
    is paid per shard, not per bucket. ``pairs_fn(shard, starts, sizes)`` receives the
    shard sorted by (keys, uid) and the runs of equal keys with two rows or more, and
    returns verified pairs of row indices and its comparison count. Results do not
    depend on ``shards``: a bucket's representatives depend only on its members."""
    import ray

    if shards is None:
        shards = max(16, 4 * int(ray.cluster_resources().get("CPU", 1)))

    def add_shard(table: pa.Table) -> pa.Table:
        code = np.zeros(table.num_rows, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for key in keys:
                code = (code ^ _key_code(table.column(key))) * np.uint64(0x9E3779B97F4A7C15)
        table = table.append_column(BUCKET_CODE, pa.array(code))
        return table.append_column("_shard", pa.array((code >> np.uint64(33)) % np.uint64(shards)))

    def per_shard(shard: pa.Table) -> pa.Table:
        shard = shard.sort_by([(k, "ascending") for k in keys] + [("uid", "ascending")])
        change = np.zeros(shard.num_rows, dtype=bool)
        change[0] = True
        for key in keys:
            values = shard.column(key).to_numpy(zero_copy_only=False)
            change[1:] |= values[1:] != values[:-1]
        starts = np.flatnonzero(change)
        sizes = np.diff(np.append(starts, shard.num_rows))
        multi = sizes > 1
        if against is not None:  # a bucket of release rows only is not this run's business
            fresh = ~pc.starts_with(shard.column("uid"), RELEASE_UID_PREFIX).to_numpy(zero_copy_only=False)
            multi &= np.add.reduceat(fresh.astype(np.int64), starts) > 0
        if not multi.any():
            return SHARD_SCHEMA.empty_table()
        i, j, compared = pairs_fn(shard, starts[multi], sizes[multi])
        links = _star_links(shard, np.asarray(i, np.int64), np.asarray(j, np.int64))
        links = links.append_column("comparisons", pa.array(np.zeros(links.num_rows, np.int64)))
        count = pa.table({"uid": [None], "score": [None], "root": [None], "comparisons": [int(compared)]}, schema=SHARD_SCHEMA)
        return pa.concat_tables([links, count])

    sharded = ds.map_batches(add_shard, batch_format="pyarrow")
    if against is not None:
        sharded = sharded.materialize()  # read twice: for its codes, then for the groupby
        codes = ray.put(code_filter(sharded))
        colliding = against.map_batches(add_shard, batch_format="pyarrow").map_batches(
            _in_code_filter, fn_kwargs={"codes": codes}, batch_format="pyarrow")
        sharded = sharded.union(colliding)
    star = StarForest()
    with sort_shuffle(sharded):
        grouped = sharded.groupby("_shard", num_partitions=min(shards, 200))
        refs = grouped.map_groups(per_shard, batch_format="pyarrow").to_arrow_refs()
    for ref in refs:  # one shard's output on the driver at a time
        table = ray.get(ref)
        if table.num_rows:
            star.add(table.cast(SHARD_SCHEMA))
        del table
    duplicates = star.duplicates()
    if against is not None:
        duplicates = duplicates.filter(pc.invert(pc.starts_with(duplicates.column("uid"), RELEASE_UID_PREFIX)))
    return duplicates, star.comparisons


def code_filter(sharded, bits_per_code: int = 16, max_bits: int = 1 << 31) -> np.ndarray:
    """A bitset of the bucket codes of ``sharded`` (one bit per code, at the code's top
    bits): a release row whose code's bit is clear shares no bucket with a new row. About
    ``bits_per_code`` bits per code (false positives ~1/16; they cost shuffle, never a
    wrong link), at most 256 MiB; the codes stream to the driver block by block."""
    import ray

    count = sharded.count()  # materialised: from the blocks' metadata
    width = int(min(np.log2(max_bits), max(16, np.ceil(np.log2(max(count, 1) * bits_per_code)))))
    bits = np.zeros((1 << width) // 8, dtype=np.uint8)
    codes = sharded.map_batches(_codes_only, batch_format="pyarrow", batch_size=None)
    for ref in codes.to_arrow_refs():  # one block's codes on the driver at a time
        table = ray.get(ref)
        if table.num_rows == 0:  # an empty block may carry no columns
            continue
        position = table.column(BUCKET_CODE).to_numpy() >> np.uint64(64 - width)
        del table
        np.bitwise_or.at(bits, (position >> np.uint64(3)).astype(np.int64),
                         (np.uint8(1) << (position & np.uint64(7)).astype(np.uint8)))
    return bits


def _codes_only(table: pa.Table) -> pa.Table:
    column = table.column(BUCKET_CODE) if table.num_rows else pa.array([], pa.uint64())
    return pa.table({BUCKET_CODE: column})


def _in_code_filter(table: pa.Table, codes) -> pa.Table:
    """Rows whose bucket code is set in the bitset ``codes`` (an object ref, shared by the tasks)."""
    import ray

    if table.num_rows == 0:
        return table
    bits = ray.get(codes) if isinstance(codes, ray.ObjectRef) else codes
    width = int(np.log2(len(bits) * 8))
    position = table.column(BUCKET_CODE).to_numpy() >> np.uint64(64 - width)
    hit = (bits[(position >> np.uint64(3)).astype(np.int64)] >> (position & np.uint64(7)).astype(np.uint8)) & 1
    return table.filter(pa.array(hit.astype(bool)))


class StarForest:
    """Union-find on the driver that holds one star link (row -> smallest uid of its
    group) per grouped row: each shard's links are folded in as they arrive, so memory
    grows with the rows that have a duplicate, not with links, bands or comparisons.
    uids are kept as fixed-width bytes (uid length + score + root per row)."""

    def __init__(self, fold_rows: int = 1 << 18):
        self.uid = np.array([], dtype="S1")
        self.score = np.array([], dtype=np.float64)
        self.root = np.array([], dtype="S1")
        self.comparisons = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._fold_rows = fold_rows

    def add(self, table: pa.Table) -> None:
        """Take a shard's output (SHARD_SCHEMA): its count rows and its links."""
        self.comparisons += int(pc.sum(table.column("comparisons")).as_py() or 0)
        links = table.filter(table.column("uid").is_valid())
        if links.num_rows == 0:
            return
        score = links.column("score").to_numpy().astype(np.float64)
        self._pending.append((_as_bytes(links.column("uid")), score, _as_bytes(links.column("root"))))
        self._pending_rows += links.num_rows
        if self._pending_rows >= max(len(self.uid), self._fold_rows):
            self._fold()

    def duplicates(self) -> pa.Table:
        """The keep rule over the groups: (uid, duplicate_of) sorted by uid."""
        self._fold()
        if len(self.uid) == 0:
            return DUPLICATES_SCHEMA.empty_table()
        _, component = np.unique(self.root, return_inverse=True)
        order = np.lexsort((self.uid, -self.score, component))
        first = np.ones(len(order), dtype=bool)
        first[1:] = component[order][1:] != component[order][:-1]
        survivor_of_component = np.empty(component.max() + 1, dtype=self.uid.dtype)
        survivor_of_component[component[order][first]] = self.uid[order][first]
        survivor = survivor_of_component[component]
        dup = survivor != self.uid
        return pa.table({"uid": pa.array(self.uid[dup]).cast(pa.string()),
                         "duplicate_of": pa.array(survivor[dup]).cast(pa.string())}, schema=DUPLICATES_SCHEMA)

    def _fold(self) -> None:
        """Connected components over the current star and the pending links; the new star."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        if not self._pending:
            return
        uid = np.concatenate([self.uid] + [p[0] for p in self._pending])
        score = np.concatenate([self.score] + [p[1] for p in self._pending])
        root = np.concatenate([self.root] + [p[2] for p in self._pending])
        self._pending, self._pending_rows = [], 0
        nodes, node_of_uid = np.unique(uid, return_inverse=True)
        node_of_root = np.searchsorted(nodes, root)  # every root also appears as a uid row
        node_score = np.full(len(nodes), -np.inf)
        node_score[node_of_uid] = score
        n = len(nodes)
        graph = coo_matrix((np.ones(len(uid), np.int8), (node_of_uid, node_of_root)), shape=(n, n))
        count, component = connected_components(graph, directed=False)
        root_of_component = np.full(count, n, dtype=np.int64)
        np.minimum.at(root_of_component, component, np.arange(n))  # nodes are sorted uids
        self.uid, self.score, self.root = nodes, node_score, nodes[root_of_component[component]]


def run_rows(starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row index, run index) of every row inside the given runs."""
    run = np.repeat(np.arange(len(starts)), sizes)
    offset = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return starts[run] + offset, run


def split_runs(rows: np.ndarray, run: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Narrow runs by a second bucketing: rows meet in a sub-run when they share a run
    *and* one column of ``keys`` (shape ``(len(rows), k)``, e.g. the pigeonhole bands of
    an image hash), so a row sits in k sub-runs. Returns (row, sub-run) memberships of
    the sub-runs with two rows or more.

    A bucket of one templated caption on k different images is then k lone rows, not
    k² candidate pairs."""
    count = keys.shape[1]
    sub_rows = np.tile(rows, count)
    sub_run = np.tile(run, count)
    column = np.repeat(np.arange(count), len(rows))
    value = np.ascontiguousarray(keys.T).reshape(-1)
    order = np.lexsort((value, column, sub_run))
    sub_rows, sub_run, column, value = sub_rows[order], sub_run[order], column[order], value[order]
    change = np.ones(len(order), dtype=bool)
    change[1:] = (sub_run[1:] != sub_run[:-1]) | (column[1:] != column[:-1]) | (value[1:] != value[:-1])
    sub = np.cumsum(change) - 1
    shared = np.bincount(sub)[sub] > 1
    return sub_rows[shared], sub[shared]


def member_rank(shard: pa.Table, rows: np.ndarray, columns: list[str]) -> np.ndarray:
    """A pseudo-random uint64 per membership, from the row's compared ``columns`` and its
    bucket: a bucket's representatives then depend only on what it holds (not on the
    shard, partitioning or cluster size), and differ from band to band."""
    from pandas.util import hash_array

    code = shard.column(BUCKET_CODE).to_numpy()[rows]
    for column in columns:
        values = shard.column(column).to_numpy(zero_copy_only=False)[rows].astype(np.uint64)
        code = hash_array(code ^ hash_array(values))
    return code


def value_pairs(value_ids: np.ndarray, rows: np.ndarray, run: np.ndarray, rank: np.ndarray, verify
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Verified row pairs inside runs, with a bounded number of checks per value.

    ``rows``/``run`` say which rows sit in which run (``run_rows`` or ``split_runs``; a
    row may sit in several). ``value_ids[row]`` names the row's comparable value
    (identical ids are duplicates with no check: a star to the value's first row).
    Inside a run, the distinct values are ordered by ``rank`` (``member_rank``) and each
    is checked with ``verify(value_a, value_b) -> bool mask`` against the run's first
    ``REPRESENTATIVES`` values and its predecessor (each value pair once per shard), so
    the cost is linear in the run's size. A value near one representative joins its
    group; one near none of them is left to the other bands, where the run has other
    members and another order. Returns (i, j, number of pairs verified)."""
    if len(rows) == 0:
        return np.array([], np.int64), np.array([], np.int64), 0
    vid = value_ids[rows]
    values, first = np.unique(vid, return_index=True)
    first_row = np.full(int(values.max()) + 1, -1, dtype=np.int64)
    first_row[values] = rows[first]
    members = np.unique(rows)
    same = members != first_row[value_ids[members]]
    pair_i, pair_j = [members[same]], [first_row[value_ids[members[same]]]]
    order = np.lexsort((vid, rank, run))
    d_run, d_vid = run[order], vid[order]
    fresh = np.ones(len(order), dtype=bool)
    fresh[1:] = (d_run[1:] != d_run[:-1]) | (d_vid[1:] != d_vid[:-1])  # (run, value) once
    d_run, d_vid = d_run[fresh], d_vid[fresh]
    change = np.ones(len(d_run), dtype=bool)
    change[1:] = d_run[1:] != d_run[:-1]
    d_starts = np.flatnonzero(change)
    d_sizes = np.diff(np.append(d_starts, len(d_run)))
    a, b = _representative_pairs(d_starts, d_sizes)
    compared = 0
    if len(a):
        width = np.int64(values.max()) + 1
        va, vb = d_vid[a], d_vid[b]
        code = _sorted_unique(np.minimum(va, vb) * width + np.maximum(va, vb))
        va, vb = code // width, code % width
        compared = len(code)
        ok = np.asarray(verify(va, vb), dtype=bool)
        pair_i.append(first_row[va[ok]])
        pair_j.append(first_row[vb[ok]])
    return np.concatenate(pair_i), np.concatenate(pair_j), compared


def _representative_pairs(starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (a, b) inside each run: every member b with each of the run's first
    ``REPRESENTATIVES`` members before it, and with its predecessor."""
    position = np.arange(sizes.sum()) - np.repeat(starts, sizes)
    run_start = np.repeat(starts, sizes)
    out_a, out_b = [], []
    for rep in range(REPRESENTATIVES):
        later = np.flatnonzero(position > rep)
        out_a.append(run_start[later] + rep)
        out_b.append(later)
    later = np.flatnonzero(position > REPRESENTATIVES)
    out_a.append(later - 1)
    out_b.append(later)
    return np.concatenate(out_a), np.concatenate(out_b)


def _sorted_unique(codes: np.ndarray) -> np.ndarray:
    """``np.unique`` for int64 codes by sort and compare: numpy 2's hash-based unique
    takes several times longer on the millions of candidate pairs of one shard."""
    codes = np.sort(codes)
    keep = np.ones(len(codes), dtype=bool)
    keep[1:] = codes[1:] != codes[:-1]
    return codes[keep]


@contextmanager
def sort_shuffle(ds):
    """Run the groupby of ``ds`` with Ray's sort-based pull shuffle, restoring the
    setting afterwards (the context is shared by the whole dataset lineage).

    Ray's default shuffle starts aggregator actors per call (4-20 s here even for a few
    rows); the sort-based shuffle runs as plain tasks and is 10-50x faster at the sizes a
    dedup key column has."""
    from ray.data.context import ShuffleStrategy

    context = ds.context
    previous = context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        context.shuffle_strategy = previous


def collect(ds) -> list[pa.Table]:
    """The non-empty blocks of ``ds`` as Arrow tables on the driver."""
    import ray

    return [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]


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
        """(uid, duplicate_of) per duplicate; with releases, ``release``: the index of the
        ``--against`` release that holds ``duplicate_of`` (null: a row of this run)."""
        survivors = [u.decode() for u in self.duplicate_of]
        table = pa.table({"uid": [u.decode() for u in self.uids], "duplicate_of": [release_uid(s)[1] for s in survivors]},
                         schema=DUPLICATES_SCHEMA)
        if any(s.startswith(RELEASE_UID_PREFIX) for s in survivors):
            table = table.append_column("release", pa.array([release_uid(s)[0] for s in survivors], pa.int32()))
        return table

    def groups(self) -> int:
        return len(np.unique(self.duplicate_of))

    def of_release(self) -> dict[int, int]:
        """Duplicates whose survivor is a release row, per release index."""
        prefix = RELEASE_UID_PREFIX.encode()
        found = [release_uid(s.decode())[0] for s in self.duplicate_of if s.startswith(prefix)]
        return {int(k): int(v) for k, v in zip(*np.unique(np.array(found, dtype=np.int64), return_counts=True))}


def release_uid(uid: str) -> tuple[int | None, str]:
    """(release index, earlier uid) of a prefixed release uid (``_against.as_release_rows``);
    (None, uid) for a uid of this run."""
    if not uid.startswith(RELEASE_UID_PREFIX):
        return None, uid
    index, _, earlier = uid[len(RELEASE_UID_PREFIX):].partition(":")
    return int(index), earlier


def reject_duplicates(stage: Stage, batch: pa.Table, lookup: DuplicateLookup) -> pa.Table:
    """Reject kept rows listed in ``lookup`` with ``<label>:duplicate_of=<survivor uid>``."""
    if batch.num_rows == 0 or len(lookup) == 0:
        return batch
    found, pos = lookup.find(batch.column("uid"))
    mask = found & kept_mask(batch)
    if not mask.any():
        return batch
    reasons = np.full(batch.num_rows, None, dtype=object)
    reasons[mask] = [_duplicate_reason(stage, s.decode()) for s in lookup.duplicate_of[pos[mask]]]
    return reject_rows(batch, mask, reasons)


def _duplicate_reason(stage: Stage, survivor: str) -> str:
    """``duplicate_of=<uid>`` (a row of this run), ``duplicate_of_release=<uid>`` (an earlier release's row)."""
    release, uid = release_uid(survivor)
    return stage.reason(f"duplicate_of={uid}" if release is None else f"duplicate_of_release={uid}")


def summary_of(lookup: DuplicateLookup, comparisons: int = 0, releases=()) -> dict:
    """``comparisons``: candidate pairs verified (linear in rows, also on templates);
    with releases, how many duplicates each one held (``duplicates_of_release``)."""
    facts = {"duplicates": len(lookup), "groups": lookup.groups(), "comparisons": int(comparisons)}
    if releases:
        per_release = lookup.of_release()
        facts["duplicates_of_release"] = {r.location: per_release.get(i, 0) for i, r in enumerate(releases)}
    return facts


class DedupStage(GlobalStage):
    """What every dedup kind does once ``fit`` has stored its duplicates: reject them
    with ``<label>:duplicate_of=<survivor>``, and report them to the audit. Subclasses
    write ``prepare`` (per-row hashes) and ``fit`` (grouping into ``self._duplicates``,
    counting verified pairs in ``self._comparisons``). ``context`` (set by the runner)
    names the earlier releases every fit also matches against (``dedup/_against.py``)."""

    context = NO_CONTEXT

    def __init__(self, config=None, **params):
        super().__init__(config, **params)
        self._duplicates = DuplicateLookup(DUPLICATES_SCHEMA.empty_table())
        self._comparisons = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        return reject_duplicates(self, ensure_columns(batch, self.adds), self._duplicates)

    def stats(self) -> dict[str, pa.Table]:
        return {"duplicates": self._duplicates.table()}

    def summary(self) -> dict:
        return summary_of(self._duplicates, self._comparisons, self.context.releases)


# ------------------------------------------------------------------ private helpers


def _star_links(shard: pa.Table, i: np.ndarray, j: np.ndarray) -> pa.Table:
    """Local components of the verified pairs over uids (a uid may sit on several rows),
    as rows (member uid, score, smallest uid of its component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return LINK_SCHEMA.empty_table()
    uid = shard.column("uid").to_numpy(zero_copy_only=False).astype(str)
    used = np.unique(np.concatenate([i, j]))
    nodes, node_of = np.unique(uid[used], return_inverse=True)
    lookup = np.full(shard.num_rows, -1, dtype=np.int64)
    lookup[used] = node_of
    n = len(nodes)
    graph = coo_matrix((np.ones(len(i), np.int8), (lookup[i], lookup[j])), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    root_of_component = np.full(count, n, dtype=np.int64)
    np.minimum.at(root_of_component, component, np.arange(n))  # nodes are sorted uids
    score = np.full(n, -np.inf)
    score[node_of] = scores_of(shard)[used]
    return pa.table(
        {"uid": nodes.tolist(), "score": score, "root": nodes[root_of_component[component]].tolist()},
        schema=LINK_SCHEMA,
    )


def _key_code(column) -> np.ndarray:
    """A uint64 code per key value, for sharding (equal values, equal codes)."""
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.uint64(), safe=False).to_numpy(zero_copy_only=False).astype(np.uint64)
    text = pc.cast(column, pa.string()).to_pylist()
    return np.array([int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "big") for v in text], dtype=np.uint64)


def _as_bytes(values) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pc.cast(values, pa.binary()).to_pylist()
    return np.array(values, dtype="S") if len(values) else np.array([], dtype="S1")
