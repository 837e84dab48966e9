"""The shared grouping without Ray: bounded verification inside a bucket, and the
driver's union-find folding shard outputs in any order and chunking."""

import numpy as np
import pyarrow as pa
import pytest

from clipcurate.dedup import _groups


def bucket_shard(values: np.ndarray) -> pa.Table:
    """One bucket holding the given values (one row each), as a shard table."""
    n = len(values)
    return pa.table({"uid": [f"u{k:05d}" for k in range(n)], "value": pa.array(values, pa.uint64()),
                     _groups.BUCKET_CODE: pa.array(np.full(n, 7, np.uint64))})


@pytest.mark.parametrize("size", [2, 6, 50, 2000])
def test_a_bucket_of_near_identical_values_costs_linear_checks(size):
    values = np.arange(size, dtype=np.uint64) + 1000
    shard = bucket_shard(values)
    rows, run = _groups.run_rows(np.array([0]), np.array([size]))
    rank = _groups.member_rank(shard, rows, ["value"])
    i, j, compared = _groups.value_pairs(np.arange(size), rows, run, rank, lambda a, b: np.ones(len(a), bool))
    assert compared <= (_groups.REPRESENTATIVES + 1) * size
    assert compared <= size * (size - 1) // 2
    if size <= _groups.REPRESENTATIVES + 2:  # small buckets: every pair
        assert compared == size * (size - 1) // 2
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count, _ = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(size, size)), directed=False)
    assert count == 1  # all similar: one group


def test_representatives_depend_on_the_bucket_only():
    """The same bucket in another shard (other rows around it, other value ids) is
    verified on the same value pairs."""
    values = np.arange(40, dtype=np.uint64) * 3 + 5
    seen = []
    for pad in (0, 13):
        shard = bucket_shard(np.concatenate([np.arange(pad, dtype=np.uint64) + 10_000, values]))
        rows, run = _groups.run_rows(np.array([pad]), np.array([len(values)]))
        ids = np.argsort(np.argsort(shard.column("value").to_numpy()))
        rank = _groups.member_rank(shard, rows, ["value"])
        pairs = []
        _groups.value_pairs(ids, rows, run, rank, lambda a, b: pairs.extend(zip(a, b)) or np.ones(len(a), bool))
        by_id = np.sort(shard.column("value").to_numpy())
        seen.append(sorted(tuple(sorted((int(by_id[a]), int(by_id[b])))) for a, b in pairs))
    assert seen[0] == seen[1]


def shard_output(links: list[tuple[str, str]], comparisons: int, scores: dict[str, float]) -> pa.Table:
    uids = [u for u, _ in links]
    return pa.table({"uid": uids + [None], "score": [scores.get(u, -np.inf) for u in uids] + [None],
                     "root": [r for _, r in links] + [None], "comparisons": [0] * len(links) + [comparisons]},
                    schema=_groups.SHARD_SCHEMA)


def test_star_forest_folds_in_any_order_and_chunking():
    rng = np.random.default_rng(0)
    uids = [f"u{k:04d}" for k in range(300)]
    scores = {u: round(float(rng.random()), 1) for u in uids}
    outputs = []
    for _ in range(40):  # shards: random local stars
        members = sorted(rng.choice(uids, int(rng.integers(2, 9)), replace=False))
        outputs.append(shard_output([(m, members[0]) for m in members], int(rng.integers(100)), scores))
    results = []
    for fold_rows, order in ((1, range(40)), (10_000, range(40)), (7, range(39, -1, -1))):
        forest = _groups.StarForest(fold_rows=fold_rows)
        for k in order:
            forest.add(outputs[k])
        assert len(forest.uid) <= len(uids)  # one star link per grouped row
        results.append((forest.duplicates().to_pylist(), forest.comparisons))
    assert results[0] == results[1] == results[2]
    duplicates = {d["uid"]: d["duplicate_of"] for d in results[0][0]}
    for uid, survivor in duplicates.items():  # the keep rule: highest score, then smallest uid
        assert (-scores[survivor], survivor) < (-scores[uid], uid)
