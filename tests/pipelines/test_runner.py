"""End to end through the engine: real HTTP on 127.0.0.1, real Ray, real parquet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.curation.sampleweb import SampleWeb

RECIPE = {
    "name": "test",
    "input": {"partition_size": 50},
    "output": {"shard_rows": 60},
    "stages": [{"download": {"image_size": 64, "timeout": 5, "allow_private_networks": True}}],
}


def _uids(folder: str) -> list[str]:
    uids = []
    for name in sorted(os.listdir(folder)):
        uids += pq.read_table(os.path.join(folder, name), columns=["uid"]).column("uid").to_pylist()
    return uids


def _run(pool: str, out: str, inline: bool = False) -> dict:
    recipe, stages = parse_recipe(RECIPE)
    return run_pipeline(recipe, stages, pool, out, RunOptions(inline=inline, progress=False))


def test_every_input_row_is_accounted_for(ray_local, sample_web, tmp_path):
    pool = sample_web.write_pool(str(tmp_path / "pool.parquet"))
    manifest = _run(pool, str(tmp_path / "out"))
    out = tmp_path / "out"
    totals = manifest["totals"]
    assert totals["input"] == 200 == totals["kept"] + totals["rejected"]
    kept, rejected = _uids(out / "shards"), _uids(out / "rejects")
    assert len(set(kept) | set(rejected)) == 200 and not set(kept) & set(rejected)

    rejects = pq.read_table(out / "rejects").to_pylist()
    assert "image" not in pq.read_schema(out / "rejects" / "part-00000.parquet").names
    by_kind = {}
    for row in rejects:
        by_kind.setdefault(row["sample_kind"], set()).add(row["reject"])
    assert by_kind["missing"] == {"download:http_4xx"}
    assert by_kind["corrupt"] == {"download:decode_error"}
    assert by_kind["truncated"] == {"download:decode_error"}
    assert all(r["reject"].startswith("download:") for r in rejects)
    kinds = {row["sample_kind"] for row in pq.read_table(out / "shards").to_pylist()}
    assert kinds.isdisjoint({"missing", "corrupt", "truncated"})

    download = manifest["stages"][1]
    assert download["name"] == "download" and download["in"] == 200
    assert download["rejected"] == len(rejects) == sum(download["reasons"].values())
    shard = manifest["shards"][0]
    assert shard["rows"] == pq.ParquetFile(out / shard["path"]).metadata.num_rows
    assert all(s["rows"] <= 60 for s in manifest["shards"])
    assert json.loads((out / "manifest.json").read_text())["totals"] == totals

    # what the download cost, summed from its calls on the Ray workers; none of it is written
    cost = download["cost"]
    assert cost["rows"] == 200 and cost["worker_s"] > 0 and cost["rows_per_s"] > 0 and cost["share"] == 1
    for folder in ("shards", "rejects"):
        names = {n for p in (out / folder).glob("*.parquet") for n in pq.read_schema(p).names}
        assert not [n for n in names if n.startswith("_cost")]


def test_inline_and_ray_runs_agree(ray_local, sample_web, tmp_path):
    pool = sample_web.write_pool(str(tmp_path / "pool.parquet"))
    _run(pool, str(tmp_path / "ray"))
    _run(pool, str(tmp_path / "inline"), inline=True)
    for folder in ("shards", "rejects"):
        assert sorted(_uids(tmp_path / "ray" / folder)) == sorted(_uids(tmp_path / "inline" / folder))
    ray_rejects = {r["uid"]: r["reject"] for r in pq.read_table(tmp_path / "ray" / "rejects").to_pylist()}
    inline_rejects = {r["uid"]: r["reject"] for r in pq.read_table(tmp_path / "inline" / "rejects").to_pylist()}
    assert ray_rejects == inline_rejects


def test_sigkill_in_phase_one_then_rerun_resumes(tmp_path):
    """Kill the driver mid-download; the rerun takes the dead run's lock, finishes, equals
    an uninterrupted run, and does not fetch again what phase 1 had already written."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(RECIPE))  # JSON is YAML
    with SampleWeb(n=160, seed=3, delay=0.05) as web:
        pool = web.write_pool(str(tmp_path / "pool.parquet"))
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "clipcurate.pipelines.cli", "run", str(recipe), "--input", pool,
               "--output", str(out), "--no-progress", "--num-cpus", "2"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        phase1 = out / "_work" / "phase1"
        deadline = time.time() + 240
        while time.time() < deadline and not any(phase1.glob("block-*.parquet")):
            assert proc.poll() is None, "the run ended before the kill"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done_files = list(phase1.glob("block-*.parquet"))
        assert done_files, "phase 1 wrote nothing before the kill"
        assert not (out / "manifest.json").exists()
        assert json.loads((out / "_lock.json").read_text())["pid"] == proc.pid  # left by the killed run
        done_urls = set()
        for path in done_files:
            done_urls.update(pq.read_table(path, columns=["url"]).column("url").to_pylist())
        before = dict(web.requests)

        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=400)
        assert not (out / "_lock.json").exists()  # the stale lock was taken over, then released
        assert json.loads((out / "manifest.json").read_text())["resume"]["phase1_rows_reused"] > 0
        refetched = [u for u in done_urls if web.requests[u[len(web.base_url):]] > before.get(u[len(web.base_url):], 0)]
        assert refetched == []

        fresh = tmp_path / "fresh"
        subprocess.run([*cmd[:-4], str(fresh), "--no-progress", "--num-cpus", "2"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=400)
    for folder in ("shards", "rejects"):
        resumed, uninterrupted = _uids(out / folder), _uids(fresh / folder)
        assert len(resumed) == len(set(resumed))
        assert set(resumed) == set(uninterrupted)
