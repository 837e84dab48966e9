"""The audit on a real run: the engine's output from the local sample web, not synthetic."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq

from clipcurate.pipelines.cli import main as curate
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline

RECIPE = {
    "name": "audit-e2e",
    "input": {"partition_size": 100},
    "output": {"shard_rows": 80},
    "stages": [
        {"download": {"image_size": 64, "timeout": 5, "allow_private_networks": True}},
        {"basic_filter": {"min_image_side": 32}},
        {"language_filter": {"keep_languages": ["en"]}},
        {"dedup_exact": {}},
    ],
}


def test_audit_of_a_real_run(ray_local, sample_web, tmp_path):
    pool = sample_web.write_pool(str(tmp_path / "pool.parquet"))
    recipe, stages = parse_recipe(RECIPE)
    out = tmp_path / "out"
    manifest = run_pipeline(recipe, stages, pool, str(out), RunOptions(inline=True, progress=False))

    assert curate(["audit", str(out), "--strict", "--samples", "8", "--per-reason", "2"]) == 0
    stats = json.loads((out / "report" / "stats.json").read_text())
    assert all(c["ok"] for c in stats["checks"]), [c for c in stats["checks"] if not c["ok"]]
    assert stats["totals"] == {**stats["totals"], **{k: manifest["totals"][k] for k in ("input", "kept", "rejected")}}
    assert [s["name"] for s in stats["stages"]] == [s["name"] for s in manifest["stages"]]
    page = (out / "report" / "index.html").read_text()
    assert f"input {manifest['fingerprint']['input']}" in page  # what the run is a function of
    assert manifest["fingerprint"]["stages"][-1]["fingerprint"] in page and "resume: fresh run" in page

    rejects = pq.read_table(out / "rejects", columns=["reject"]).column("reject").to_pylist()
    assert stats["reasons"] == dict(Counter(r.split("=", 1)[0] for r in rejects))
    assert stats["lang"] is not None and stats["lang"]["kept"].get("en", 0) == manifest["totals"]["kept"]
    duplicates = [r for r in rejects if r.startswith("dedup_exact:duplicate_of=")]
    assert stats["dedup"]["dedup_exact"]["duplicates"] == len(duplicates)

    # thumbnails of real downloaded images for the sampled kept rows
    thumbs = list((out / "report" / "assets" / "thumbs-a").glob("*.jpg"))
    assert len(thumbs) >= min(8, manifest["totals"]["kept"])
