"""MetaCLIP continuing from an earlier release (issue 16): the union of the release and
the new rows is balanced at t."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.curation.metaclip import MetaClipBalance, budget_probs
from clipcurate.pipelines.release import open_context
from clipcurate.pipelines.stage import make_uid

T = 50
ENTRIES = ["cat", "dog", "owl", "fox"]


def write_release(folder, shard: pa.Table, entry_counts: pa.Table | None) -> str:
    (folder / "shards").mkdir(parents=True)
    pq.write_table(shard, folder / "shards" / "part-00000.parquet")
    stats, stages = {}, []
    if entry_counts is not None:
        (folder / "stats").mkdir()
        pq.write_table(entry_counts, folder / "stats" / "metaclip.entry_counts.parquet")
        stats["metaclip.entry_counts"] = "stats/metaclip.entry_counts.parquet"
        stages.append({"name": "metaclip", "type": "metaclip", "summary": {"t": T}})
    manifest = {"totals": {"kept": shard.num_rows}, "stats": stats, "stages": stages,
                "shards": [{"path": "shards/part-00000.parquet",
                            "bytes": (folder / "shards" / "part-00000.parquet").stat().st_size}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)


def new_pool(counts: dict[str, int]) -> pa.Table:
    captions = [f"a {name} number {i}" for name, n in counts.items() for i in range(n)]
    return pa.table({"uid": [make_uid(f"http://new/{i}", c) for i, c in enumerate(captions)], "caption": captions,
                     "reject": pa.nulls(len(captions), pa.string())})


def balance(stage, table, ray):
    prepared = stage.prepare(table)
    stage.fit(ray.data.from_arrow(prepared.filter(prepared.column("reject").is_null())))
    out = stage(prepared)
    kept = out.filter(out.column("reject").is_null()).column("caption").to_pylist()
    return {name: sum(c.startswith(f"a {name} ") for c in kept) for name in ENTRIES}


@pytest.fixture
def metadata(tmp_path):
    path = tmp_path / "entries.json"
    path.write_text(json.dumps(ENTRIES))
    return str(path)


def test_union_respects_t_from_release_stats(ray_local, tmp_path, metadata):
    counts = pa.table({"entry_id": pa.array([0, 1, 2, 3], pa.int32()), "entry": ENTRIES,
                       "count_before": [500, 30, 0, 10], "count_after": [T, 30, 0, 10]})
    location = write_release(tmp_path / "rel", pa.table({"uid": ["r0"], "caption": ["a cat"]}), counts)
    stage = MetaClipBalance(metadata=metadata, t=T)
    stage.context = open_context([location], cache=None)
    kept = balance(stage, new_pool({"cat": 200, "dog": 200, "owl": 3, "fox": 45}), ray_local)
    assert kept["cat"] == 0  # the release already holds t cat pairs
    assert kept["owl"] == 3  # a tail entry keeps every new pair
    assert 6 <= kept["dog"] <= 36  # 20 left of t, drawn from 200 (binomial 0.1: 99.9 % within)
    assert 33 <= kept["fox"] <= 45  # 40 left, 45 new: p = 0.89 (mean 40, sd 2.1)
    union = stage.stats()["entry_counts"]
    assert union.column("count_release").to_pylist() == [T, 30, 0, 10]
    summary = stage.summary()
    assert summary["continued_from"] == [{"release": location, "digest": stage.context.releases[0].digest,
                                          "counts": "stats", "t": T, "kept_matches": 90}]
    assert summary["union_max"] <= T + 7  # dog and fox at t in expectation, cat exactly at t


def test_release_without_stats_is_matched(ray_local, tmp_path, metadata):
    shard = pa.table({"uid": [f"r{i}" for i in range(T + 5)], "caption": ["a cat on a mat"] * T + ["a fox"] * 5})
    location = write_release(tmp_path / "rel", shard, None)
    stage = MetaClipBalance(metadata=metadata, t=T)
    stage.context = open_context([location], cache=None)
    kept = balance(stage, new_pool({"cat": 40, "fox": 60}), ray_local)
    assert kept["cat"] == 0 and 33 <= kept["fox"] <= 45  # 45 left of 50, 60 new
    assert stage.summary()["continued_from"][0]["counts"] == "matched"


def test_budget_probs():
    probs = budget_probs(np.array([100, 10, 0, 4]), np.array([50, 45, 0, 60]), 50)
    assert probs.tolist() == [0.0, 0.5, 1.0, 0.0]
