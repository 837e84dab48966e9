"""The runner's own safety checks fire: a stage that loses or duplicates rows, and phase-1
files that hold a row twice, stop the run loudly instead of writing a wrong dataset."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines.recipe import Recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.pipelines.stage import Stage


class Drops(Stage):
    """Returns one row fewer than it was given: breaks the stage contract."""

    name = "drops"

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.slice(1)


class Copies(Stage):
    """Returns as many rows as given, the first one twice: the count check cannot see it."""

    name = "copies"

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.concat_tables([batch.slice(0, 1), batch.slice(0, batch.num_rows - 1)])


class Checkpointed(Stage):
    """Keeps every row; its output is kept for reruns, as a download's."""

    name = "checkpointed"
    checkpoint = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


@pytest.fixture
def pool(tmp_path) -> str:
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://example.test/{i}.jpg" for i in range(40)],
                             "caption": [f"a photo of thing {i}" for i in range(40)]}), path)
    return str(path)


def _run(stages, pool, out):
    return run_pipeline(Recipe(input={"partition_size": 10}), stages, pool, str(out),
                        RunOptions(inline=True, progress=False))


def test_a_stage_that_drops_a_row_stops_the_run(pool, tmp_path):
    with pytest.raises(RuntimeError, match="stage drops returned 39 rows for 40"):
        _run([Drops()], pool, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_stage_that_duplicates_a_row_fails_the_accounting(pool, tmp_path):
    with pytest.raises(RuntimeError, match="accounting failed: input 40 rows.*duplicated uids"):
        _run([Copies()], pool, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_phase1_files_holding_a_row_twice_stop_the_rerun(pool, tmp_path):
    out = tmp_path / "out"
    _run([Checkpointed()], pool, out)
    (out / "manifest.json").unlink()  # as if interrupted after phase 1
    block = sorted((out / "_work" / "phase1").glob("block-*.parquet"))[0]
    shutil.copy(block, block.with_name("block-copy.parquet"))  # a stray second copy
    with pytest.raises(RuntimeError, match="phase 1 wrote uid .* twice"):
        _run([Checkpointed()], pool, out)
