"""``curate run --sample N``: the recipe on N input rows drawn by uid hash, into
OUTPUT/preview, with the funnel, warnings, each stage's time and a projection of the
full input's wall time."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines.cli import main as curate
from clipcurate.pipelines.stage import make_uid, unit_hash

ROWS = 1000
RECIPE = """name: preview-test
seed: {seed}
input: {{url_col: link, caption_col: text, partition_size: 40}}
stages:
  - basic_filter: {{}}
"""


@pytest.fixture
def pool(tmp_path):
    """1,000 rows in two csv files, 40% with two-word captions (basic_filter removes them)."""
    rng = np.random.default_rng(0)
    short = rng.random(ROWS) < 0.4
    links = [f"http://example.test/{i}.jpg" for i in range(ROWS)]
    texts = [f"shape {i}" if s else f"a red circle number {i}" for i, s in enumerate(short)]
    for part, rows in (("a", slice(0, 600)), ("b", slice(600, ROWS))):
        pacsv.write_csv(pa.table({"link": links[rows], "text": texts[rows], "n": list(range(ROWS))[rows]}),
                         tmp_path / f"pool-{part}.csv")
    return {"glob": str(tmp_path / "pool-*.csv"), "uids": [make_uid(u, c) for u, c in zip(links, texts)]}


def _recipe(tmp_path, seed: int = 0) -> str:
    path = tmp_path / f"recipe-{seed}.yaml"
    path.write_text(RECIPE.format(seed=seed))
    return str(path)


def _sampled(out) -> list[str]:
    return sorted(pq.read_table(out / "preview" / "shards").column("uid").to_pylist()
                  + pq.read_table(out / "preview" / "rejects").column("uid").to_pylist())


def _smallest_draws(uids: list[str], n: int, seed: int) -> list[str]:
    draws = unit_hash(uids, "preview", seed)
    return sorted(np.asarray(uids)[np.argsort(draws)[:n]].tolist())


def test_sample_previews_into_its_own_folder_with_a_projection(pool, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", _recipe(tmp_path), "--input", pool["glob"], "--output", str(out), "--sample", "100",
            "--inline", "--no-progress"]
    assert curate(args) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["preview"]  # never a full run's files
    assert _sampled(out) == _smallest_draws(pool["uids"], 100, seed=0)

    manifest = json.loads((out / "preview" / "manifest.json").read_text())
    assert manifest["totals"]["input"] == 100 and manifest["preview"]["input"]["rows"] == ROWS
    assert manifest["preview"]["sample_rows"] == 100
    assert "n" in pq.read_schema(next((out / "preview" / "shards").glob("*.parquet"))).names  # extras kept
    basic = manifest["stages"][1]
    assert basic["warning"] and basic["cost"]["rows"] == 100
    projection = manifest["preview"]["projection"]
    assert projection["ratio"] == 10 and projection["wall_s"] > 0
    assert set(projection["stages"]) == {"basic_filter"}

    assert "basic_filter !" in printed and "! basic_filter removed" in printed
    assert "preview: 100 of 1,000 input rows" in printed
    assert "projected wall time for all 1,000 rows here (inline" in printed and "an estimate" in printed
    assert "curate audit" in printed

    # the same command draws the same rows and replaces the preview; a larger sample holds it
    assert curate(args) == 0
    assert _sampled(out) == _smallest_draws(pool["uids"], 100, seed=0)
    assert curate([*args[:-3], "250", "--inline", "--no-progress"]) == 0
    assert set(_smallest_draws(pool["uids"], 100, seed=0)) < set(_sampled(out))
    # another seed, another sample; a full run next to the preview is untouched by it
    assert curate(["run", _recipe(tmp_path, seed=1), *args[2:]]) == 0
    assert _sampled(out) == _smallest_draws(pool["uids"], 100, seed=1) != _smallest_draws(pool["uids"], 100, 0)
    capsys.readouterr()
    assert curate(["run", _recipe(tmp_path), "--input", pool["glob"], "--output", str(out), "--inline",
                   "--no-progress"]) == 0
    assert json.loads((out / "manifest.json").read_text())["totals"]["input"] == ROWS
    assert (out / "preview" / "manifest.json").exists()
