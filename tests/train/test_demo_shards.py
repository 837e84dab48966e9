"""The trainer on the pipeline's own output: the sample web -> download -> shards ->
a tiny CLIP whose zero-shot top-1 on held-out shapes is at least twice chance."""

from __future__ import annotations

import pyarrow.parquet as pq

from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.curation.sampleweb import SHAPES, SampleWeb, labeled_set
from clipcurate.train.api import evaluate, train


def test_tiny_clip_on_demo_shards_beats_twice_chance(tmp_path):
    recipe, stages = parse_recipe({
        "input": {"partition_size": 200},
        "stages": [
            {"download": {"image_size": 64, "allow_private_networks": True}},
            {"basic_filter": {"min_image_side": 64}},
        ],
    })
    with SampleWeb(n=500, seed=0) as web:
        pool = web.write_pool(str(tmp_path / "pool.parquet"))
        manifest = run_pipeline(recipe, stages, pool, str(tmp_path / "run"), RunOptions(inline=True, progress=False))
    assert manifest["totals"]["kept"] > 350
    pq.write_table(labeled_set(per_class=30), tmp_path / "labeled.parquet")

    train(tmp_path / "run", model="clip-tiny", steps=200, batch_size=64, output=tmp_path / "model", quiet=True)
    scores = evaluate(tmp_path / "model", tmp_path / "labeled.parquet")
    assert scores["zeroshot_top1"] >= 2 / len(SHAPES), scores
