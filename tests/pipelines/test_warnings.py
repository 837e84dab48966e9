"""Warnings and costs in every run: a stage that removes more than the recipe's
``warn_reject_share`` of its input is flagged in the manifest and the printed funnel;
each stage's worker-seconds, CPU seconds and rows/s are measured per call, travel with the
rows (through Ray, across a resume) and never reach shards or rejects; a preview projects
them onto the full input."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines.errors import RecipeError, UserError
from clipcurate.pipelines.manifest import format_funnel
from clipcurate.pipelines.recipe import Recipe, parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline, run_preview
from clipcurate.pipelines.stage import Resources, Stage, StageConfig, reject_rows, unit_hash

ROWS, BATCH, SLEEP = 400, 50, 0.02


class DrawRejectConfig(StageConfig):
    share: float = 0.5
    sleep: float = 0.0


class DrawReject(Stage):
    """Rejects the rows whose draw falls under ``share`` and sleeps ``sleep`` seconds per
    call: its share removed and its time are known before the run."""

    name = "draw_reject"
    Config = DrawRejectConfig

    def resources(self) -> Resources:
        return Resources(batch_size=BATCH)

    def __call__(self, batch: pa.Table) -> pa.Table:
        time.sleep(self.config.sleep)
        drawn = unit_hash(batch.column("uid").to_pylist(), self.label, 0) < self.config.share
        return reject_rows(batch, drawn, self.reason("drawn"))


def _stages(heavy_share: float = 0.5, light_share: float = 0.1, checkpoint: bool = False) -> list[Stage]:
    """``checkpoint``: the runner keeps both stages' output for reruns (as a download's)."""
    heavy, light = DrawReject(share=heavy_share, sleep=SLEEP), DrawReject(share=light_share)
    heavy.label, light.label = "heavy", "light"
    light.checkpoint = checkpoint
    return [heavy, light]


def _pool(tmp_path, empty_captions: int = 8) -> str:
    captions = [f"a photo of thing {i}" for i in range(ROWS - empty_captions)] + [""] * empty_captions
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://example.test/{i}.jpg" for i in range(ROWS)], "caption": captions}), path)
    return str(path)


def _run(pool: str, out, share: float | None = None, inline: bool = True, checkpoint: bool = False) -> dict:
    recipe = Recipe(name="warnings", input={"partition_size": 100},
                    **({} if share is None else {"warn_reject_share": share}))
    return run_pipeline(recipe, _stages(checkpoint=checkpoint), pool, str(out),
                        RunOptions(inline=inline, progress=False))


def _columns(folder) -> set[str]:
    return {name for path in folder.glob("*.parquet") for name in pq.read_schema(path).names}


def test_a_stage_over_the_share_is_flagged_in_manifest_and_funnel(tmp_path):
    manifest = _run(_pool(tmp_path), tmp_path / "out")
    stages = {s["name"]: s for s in manifest["stages"]}
    heavy, light = stages["heavy"], stages["light"]
    assert heavy["rejected"] / heavy["in"] > 0.3 > light["rejected"] / light["in"]
    assert "warning" not in light and "warning" not in stages["input"]  # 8 empty captions of 400
    warning = heavy["warning"]
    assert warning["share_removed"] == pytest.approx(heavy["rejected"] / heavy["in"], abs=1e-4)
    assert warning["threshold"] == 0.3 and warning["top_reasons"] == {"heavy:drawn": heavy["rejected"]}
    assert manifest["warnings"] == [warning["message"]]
    assert warning["message"].startswith(f"heavy removed {heavy['rejected'] / heavy['in']:.1%} of the {heavy['in']:,}")
    assert "drawn=" in warning["message"]

    funnel = format_funnel(manifest)
    assert "heavy !" in funnel and "light !" not in funnel and "input !" not in funnel
    assert f"! {warning['message']}" in funnel.splitlines()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["warnings"] == manifest["warnings"]


def test_the_share_is_the_recipes(tmp_path):
    pool = _pool(tmp_path, empty_captions=60)  # 15% of the input
    assert _run(pool, tmp_path / "loose", share=0.6)["warnings"] == []
    strict = _run(pool, tmp_path / "strict", share=0.05)
    assert [s["name"] for s in strict["stages"] if "warning" in s] == ["input", "heavy", "light"]
    assert strict["stages"][0]["warning"]["top_reasons"] == {"input:empty_caption": 60}
    assert "input removed 15.0% of the 400 rows it received (warn_reject_share 5%)" in strict["warnings"][0]
    with pytest.raises(RecipeError, match="warn_reject_share"):
        parse_recipe({"warn_reject_share": 1.5, "stages": []})


def test_costs_are_measured_per_call_and_never_written(tmp_path):
    manifest = _run(_pool(tmp_path), tmp_path / "out")
    stages = {s["name"]: s for s in manifest["stages"]}
    assert "cost" not in stages["input"]
    for name in ("heavy", "light"):
        cost = stages[name]["cost"]
        assert cost["rows"] == stages[name]["in"]
        assert all(cost[k] >= 0 for k in ("worker_s", "cpu_s", "gpu_s", "fit_s"))
        assert cost["gpu_s"] == 0 and cost["fit_s"] == 0 and cost["max_workers"] == 1
    heavy = stages["heavy"]["cost"]
    calls = ROWS // BATCH  # 4 partitions of 100 rows, 2 calls each
    assert heavy["worker_s"] >= calls * SLEEP
    assert heavy["cpu_s"] < heavy["worker_s"]  # sleeping is not CPU time
    assert heavy["rows_per_s"] == pytest.approx(heavy["rows"] / heavy["worker_s"], rel=1e-2)
    assert stages["heavy"]["cost"]["share"] > stages["light"]["cost"]["share"]
    assert sum(s["cost"]["share"] for s in stages.values() if "cost" in s) == pytest.approx(1, abs=1e-3)
    phases = manifest["timing"]["phases_s"]
    assert set(phases) == {"split", "start", "phase1", "phase2", "write"} and min(phases.values()) >= 0
    assert phases["phase2"] >= calls * SLEEP  # no download: every stage runs in phase 2
    assert manifest["timing"]["executor"] == "inline"

    out = tmp_path / "out"
    assert not [c for c in _columns(out / "shards") | _columns(out / "rejects") if c.startswith("_cost")]


class HalfGpu(DrawReject):
    """Declares half a GPU per worker (the inline executor runs it on the CPU all the same)."""

    def resources(self) -> Resources:
        return Resources(batch_size=BATCH, num_gpus=0.5)


def test_gpu_seconds_are_call_seconds_times_the_gpus_a_worker_holds(tmp_path):
    stage = HalfGpu(share=0.1, sleep=SLEEP)
    manifest = run_pipeline(Recipe(input={"partition_size": 100}), [stage], _pool(tmp_path), str(tmp_path / "out"),
                            RunOptions(inline=True, progress=False))
    cost = manifest["stages"][1]["cost"]
    assert cost["worker_s"] >= ROWS // BATCH * SLEEP and cost["num_gpus"] == 0.5
    assert cost["gpu_s"] == pytest.approx(0.5 * cost["worker_s"], abs=1e-3)


def test_a_resumed_run_keeps_the_cost_of_rows_done_before(tmp_path):
    pool, out = _pool(tmp_path), tmp_path / "out"
    first = _run(pool, out, checkpoint=True)
    assert {"_cost_wall.heavy", "_cost_cpu.light"} <= _columns(out / "_work" / "phase1")
    (out / "manifest.json").unlink()  # as if killed after phase 1: the rerun has no stage call to make
    second = _run(pool, out, checkpoint=True)
    assert second["timing"]["phases_s"]["phase1"] < ROWS // BATCH * SLEEP
    for before, after in zip(first["stages"][1:], second["stages"][1:]):
        assert after["cost"]["worker_s"] == before["cost"]["worker_s"] > 0
        assert after["cost"]["cpu_s"] == before["cost"]["cpu_s"]


def test_costs_through_ray_with_a_global_stage(ray_local, tmp_path):
    raw = {"name": "ray-costs", "input": {"partition_size": 60},
           "stages": [{"basic_filter": {}}, {"dedup_minhash": {"threshold": 0.8, "match": "caption"}}]}
    captions = [f"red square number {i % 90} on white" for i in range(150)] + [f"x{i}" for i in range(30)]
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://example.test/{i}.jpg" for i in range(180)], "caption": captions}), pool)
    recipe, stages = parse_recipe(raw)
    out = tmp_path / "out"
    manifest = run_pipeline(recipe, stages, str(pool), str(out), RunOptions(progress=False))

    basic, dedup = manifest["stages"][1], manifest["stages"][2]
    assert basic["cost"]["rows"] == basic["in"] == 180 and dedup["cost"]["rows"] == dedup["in"] == 150
    assert "warning" not in basic  # 30 one-word captions of 180
    assert dedup["cost"]["fit_s"] > 0 and dedup["cost"]["worker_s"] > dedup["cost"]["fit_s"]  # prepare + apply
    assert basic["cost"]["worker_s"] > 0 and basic["cost"]["max_workers"] == 2
    assert manifest["timing"]["executor"] == "ray" and manifest["timing"]["cpus"] == 2
    assert not [c for c in _columns(out / "shards") | _columns(out / "rejects") if c.startswith("_cost")]


def test_projection_scales_worker_seconds_by_rows_and_workers(tmp_path):
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://example.test/{i}" for i in range(600)],
                             "caption": [f"caption {i}" for i in range(600)]}), pool)
    manifest = run_preview(Recipe(input={"partition_size": 50}), _stages(), str(pool), str(tmp_path / "out"),
                           sample_rows=200, options=RunOptions(inline=True, progress=False))
    projection = manifest["preview"]["projection"]
    heavy = next(s for s in manifest["stages"] if s["name"] == "heavy")["cost"]
    assert heavy["worker_s"] >= 200 / 50 * SLEEP  # four calls of 50 rows, each sleeping
    assert projection["ratio"] == 3
    assert projection["stages"]["heavy"]["projected_s"] == pytest.approx(3 * heavy["worker_s"], abs=1e-3)  # one worker inline
    phases = manifest["timing"]["phases_s"]
    worker_s = sum(s["cost"]["worker_s"] for s in manifest["stages"] if "cost" in s)
    overhead = max(0.0, manifest["wall_s"] - phases["split"] - phases["write"] - worker_s)
    assert projection["overhead_s"] == pytest.approx(overhead, abs=2e-3)
    expected = overhead + 3 * (phases["split"] + phases["write"]) + sum(
        s["projected_s"] for s in projection["stages"].values())
    assert projection["wall_s"] == pytest.approx(expected, abs=0.1)
    with pytest.raises(UserError, match="above 0"):
        run_preview(Recipe(), _stages(), str(pool), str(tmp_path / "out"), sample_rows=0)
