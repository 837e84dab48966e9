"""What ``curate run`` shows a user: our lines only (Ray's own output goes to the run's
log file), a live view of each phase, and ``--set`` recorded where the run is described."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest
import yaml

from clipcurate.pipelines import progress as live

RECIPE = {
    "name": "console",
    "input": {"partition_size": 40},
    "output": {"shard_rows": 60},
    "stages": [{"download": {"image_size": 64, "timeout": 5, "allow_private_networks": True}},
               {"basic_filter": {"min_image_side": 32}},
               {"dedup_exact": {}}],
}
# the lines a run prints that are ours: the log line, the live view, the funnel and its summary
OURS = ("Ray's logs:", "phase 1:", "phase 2:", "stage ", "input ", "download ", "basic_filter ", "dedup_exact ",
        "total ", "wall ", "resume:", "shards:", "warning", "  ")


def test_a_run_to_a_file_prints_our_lines_only_and_ray_logs_to_the_work_folder(tmp_path, sample_web):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    pool = sample_web.write_pool(str(tmp_path / "pool.parquet"))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "clipcurate.pipelines.cli", "run", str(recipe), "--input", pool,
                           "--output", str(out), "--num-cpus", "2", "--set", "basic_filter.min_image_side=48",
                           "--set", "seed=3"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    foreign = [line for line in lines if not line.startswith(OURS)]
    assert len(foreign) <= 3, foreign
    assert lines[0] == f"Ray's logs: {out / '_work' / 'ray.log'} (-v shows them here)"
    assert any(line.startswith("phase 1: 200/200 rows through 1 stage(s)") for line in lines), lines
    assert any(line.startswith("phase 2: dedup_exact fitted in") for line in lines), lines
    ray_log = (out / "_work" / "ray.log").read_text()
    assert "Started a local Ray instance" in ray_log and "Execution plan" in ray_log

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["overrides"] == ["basic_filter.min_image_side=48", "seed=3"]
    assert manifest["recipe"]["stages"][1] == {"basic_filter": {"min_image_side": 48}}
    assert manifest["seed"] == 3


def test_verbose_shows_rays_logs_here(tmp_path, sample_web):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "stages": RECIPE["stages"][:1]}))
    pool = sample_web.write_pool(str(tmp_path / "pool.parquet"))
    done = subprocess.run([sys.executable, "-m", "clipcurate.pipelines.cli", "run", str(recipe), "--input", pool,
                           "--output", str(tmp_path / "out"), "--num-cpus", "2", "-v", "--no-progress"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Started a local Ray instance" in done.stdout
    assert not (tmp_path / "out" / "_work" / "ray.log").exists()


class _Lines:
    """A stream that is not a terminal and keeps what was written."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return False


def test_the_view_counts_rows_and_kept_rows_per_stage_and_prints_a_line_per_phase(monkeypatch):
    monkeypatch.setattr(live, "POLL_S", 0.01)
    stream = _Lines()
    view = live.RunProgress(ray_board=False, stream=stream)
    try:
        view.start_phase("phase 2", ["basic_filter", "dedup_exact"], 10)
        batch = pa.table({"uid": [str(i) for i in range(5)], "reject": pa.array([None, None, "x", None, "y"])})
        live.report("basic_filter", batch)
        live.report("basic_filter", batch)
        live.report("dedup_exact", batch)
        live.note("dedup_exact", "fitted in 0.1 s")
        view.end_phase()
    finally:
        view.close()
    assert view.board.snapshot() == {"basic_filter": [10, 6], "dedup_exact": [5, 3]}
    assert "phase 2: dedup_exact fitted in 0.1 s" in stream.text
    last = stream.text.strip().splitlines()[-1]
    assert last.startswith("phase 2: 5/10 rows through 2 stage(s), 3 kept,"), last
    live.report("basic_filter", batch)  # no view open: nothing counted, nothing raised


@pytest.mark.parametrize("elapsed, through, expect", [(10.0, 5, "ETA 0:00:10"), (10.0, 0, "ETA unknown")])
def test_a_phase_line_gives_the_time_left_at_the_current_rate(elapsed, through, expect):
    phase = live._Phase("phase 1", ["download"], 10)
    assert expect in live.phase_line(phase, {"download": [through, through]}, elapsed)
