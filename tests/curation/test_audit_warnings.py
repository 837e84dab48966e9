"""The audit shows a run's warnings first and where its time went: from the manifest of a
real (inline) run, and derived with the runner's rule for a manifest that predates them."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.curation.audit.stats import compute_stats
from clipcurate.curation.audit.synthetic import write_synthetic_run
from clipcurate.pipelines.cli import main as curate
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline


def _run(tmp_path, short_share: float) -> tuple:
    n = 200
    short = int(n * short_share)
    captions = [f"cap {i}" for i in range(short)] + [f"a blue square number {i}" for i in range(n - short)]
    pool = tmp_path / f"pool-{short}.parquet"
    pq.write_table(pa.table({"url": [f"http://example.test/{i}.jpg" for i in range(n)], "caption": captions}), pool)
    recipe, stages = parse_recipe({"name": "audit-warnings", "stages": [{"basic_filter": {}}]})
    out = tmp_path / f"out-{short}"
    return out, run_pipeline(recipe, stages, str(pool), str(out), RunOptions(inline=True, progress=False))


def test_warning_and_time_sections_of_a_run(tmp_path, capsys):
    out, manifest = _run(tmp_path, short_share=0.4)
    assert curate(["audit", str(out), "--strict", "--samples", "4", "--per-reason", "2"]) == 0
    stats = json.loads((out / "report" / "stats.json").read_text())
    assert stats["warnings"] == manifest["warnings"] == [manifest["stages"][1]["warning"]["message"]]
    assert stats["stages"][1]["warning"] == manifest["stages"][1]["warning"]
    assert stats["stages"][1]["cost"] == manifest["stages"][1]["cost"]
    assert stats["timing"]["phases_s"] == manifest["timing"]["phases_s"]

    page = (out / "report" / "index.html").read_text()
    warnings = page.index('<section id="warnings">')
    assert warnings < page.index('<section id="overview">')  # first on the page
    assert "basic_filter removed 40.0% of the 200 rows it received (warn_reject_share 30%)" in page
    assert 'basic_filter <b class="flag"' in page
    time_section = page[page.index('<section id="time">'):]
    assert "worker-s" in time_section and "rows / worker-s" in time_section and "phase1" in time_section

    capsys.readouterr()
    assert curate(["stats", str(out)]) == 0
    assert "warning: basic_filter removed 40.0%" in capsys.readouterr().out


def test_a_run_without_warnings_says_so(tmp_path):
    out, manifest = _run(tmp_path, short_share=0.1)
    assert manifest["warnings"] == []
    assert curate(["audit", str(out), "--samples", "2", "--per-reason", "1"]) == 0
    page = (out / "report" / "index.html").read_text()
    assert "No stage removed more than 30% of the rows it received." in page


def test_a_manifest_without_warnings_or_costs_gets_them_derived(tmp_path):
    run = write_synthetic_run(tmp_path / "old", 2_000, seed=4)
    manifest = json.loads((run.out / "manifest.json").read_text())
    assert "warnings" not in manifest
    manifest["recipe"]["warn_reject_share"] = 0.05
    (run.out / "manifest.json").write_text(json.dumps(manifest))

    stats = compute_stats(run.out)
    flagged = [s["name"] for s in manifest["stages"] if s["in"] and s["rejected"] / s["in"] > 0.05]
    assert flagged and [s["name"] for s in stats["stages"] if "warning" in s] == flagged
    assert len(stats["warnings"]) == len(flagged) and stats["warn_reject_share"] == 0.05
    assert curate(["audit", str(run.out)]) == 0
    page = (run.out / "report" / "index.html").read_text()
    assert "not recorded: this run&#x27;s manifest has no stage costs" in page
    assert "(warn_reject_share 5%)" in page
