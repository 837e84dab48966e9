"""The same input, recipe and seed give the same dataset: a chain of every kind of stage
(filters, a CLIP model with random weights, the four dedups, MetaCLIP) run twice on
Ray keeps the same uids, rejects each row for the same reason and counts the same."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.curation.sampleweb import COLOURS, SHAPES, generate_samples


def _recipe(metadata) -> dict:
    return {
        "name": "reproducible", "seed": 7,
        "input": {"partition_size": 40}, "output": {"shard_rows": 50},
        "stages": [
            {"basic_filter": {"min_image_side": 32}},
            {"clip_score": {"model": "clip-tiny", "keep_top": 0.8, "embeddings": True, "batch_size": 16}},
            {"dedup_exact": {}},
            {"dedup_perceptual": {}},
            {"dedup_minhash": {}},
            {"dedup_semantic": {"eps": 0.0005}},
            {"metaclip": {"metadata": str(metadata), "t": 4}},
        ],
    }


def _outcome(out) -> tuple[dict, list]:
    """Every row's fate (None: kept) and the manifest's per-stage counts."""
    fate = {}
    for folder in ("shards", "rejects"):
        for path in sorted((out / folder).glob("*.parquet")):
            table = pq.read_table(path, columns=["uid", "reject"])
            fate.update(zip(table.column("uid").to_pylist(), table.column("reject").to_pylist()))
    manifest = json.loads((out / "manifest.json").read_text())
    counts = [(s["name"], s["in"], s["kept"], s["reasons"]) for s in manifest["stages"]]
    return fate, counts


def test_same_input_recipe_and_seed_give_the_same_dataset(ray_local, tmp_path):
    samples = [s for s in generate_samples(160, seed=3) if s.body is not None]
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://example.test/{s.path}" for s in samples],
                             "caption": [s.caption for s in samples],
                             "image": pa.array([s.body for s in samples], pa.binary())}), pool)
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps([*SHAPES, *COLOURS]))
    outcomes = []
    for run in ("a", "b"):
        recipe, stages = parse_recipe(_recipe(metadata))
        run_pipeline(recipe, stages, str(pool), str(tmp_path / run), RunOptions(progress=False))
        outcomes.append(_outcome(tmp_path / run))
    (fate_a, counts_a), (fate_b, counts_b) = outcomes
    assert len(fate_a) == len(samples)
    kept = sum(r is None for r in fate_a.values())
    assert 0 < kept < len(samples) and {r.split(":")[0] for r in fate_a.values() if r} >= {"clip_score", "metaclip"}
    assert fate_a == fate_b
    assert counts_a == counts_b
