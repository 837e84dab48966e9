"""The stage identity contract (pipelines/stage.py): a stage's name is its recipe key,
reject strings are read back by one parser, resources are asked again after ``fit``."""
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines.recipe import Recipe
from clipcurate.pipelines.registry import STAGES, stage_class
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.pipelines.stage import GlobalStage, Reject, Resources, parse_reject, reject_parts, set_column


@pytest.mark.parametrize("key", sorted(STAGES))
def test_registry_key_is_the_stage_name(key):
    """Errors, reject reasons and the funnel name a stage by the key the YAML has."""
    assert stage_class(key).name == key


VALUES = {
    "dedup_exact:duplicate_of=0123abcd": Reject("dedup_exact", "duplicate_of", "0123abcd"),
    "download:http_4xx=429": Reject("download", "http_4xx", "429"),
    "clip_score:below_threshold": Reject("clip_score", "below_threshold", None),
    "metaclip_2:over_cap": Reject("metaclip_2", "over_cap", None),
    "input:empty_caption": Reject("input", "empty_caption", None),
    "blocklist:url=http://a.example/x?y=1": Reject("blocklist", "url", "http://a.example/x?y=1"),
}


def test_parse_reject_and_its_polars_twin_agree():
    for value, expected in VALUES.items():
        assert parse_reject(value) == expected
    frame = pl.DataFrame({"reject": list(VALUES)}).with_columns(reject_parts())
    assert frame["stage"].to_list() == [r.stage for r in VALUES.values()]
    assert frame["reason"].to_list() == [r.reason for r in VALUES.values()]
    assert frame["detail"].to_list() == [r.detail for r in VALUES.values()]


class CutsAfterFit(GlobalStage):
    """Scores with a one-actor pool (as a model stage); after ``fit`` it only compares,
    in plain tasks of 4 rows. Records how many rows each ``__call__`` got."""

    name = "cuts_after_fit"
    adds = {"call_rows": pa.int64()}

    def __init__(self):
        super().__init__()
        self.fitted = False

    def resources(self) -> Resources:
        return Resources(batch_size=4) if self.fitted else Resources(batch_size=64, concurrency=1)

    def fit(self, ds) -> None:
        self.fitted = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        return set_column(batch, "call_rows", pa.array([batch.num_rows] * batch.num_rows, pa.int64()))


def test_the_runner_asks_for_resources_again_after_fit(ray_local, tmp_path):
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://example.test/{i}.jpg" for i in range(40)],
                             "caption": [f"a photo of thing {i}" for i in range(40)]}), pool)
    run_pipeline(Recipe(input={"partition_size": 20}), [CutsAfterFit()], str(pool), str(tmp_path / "out"),
                 RunOptions(progress=False))
    shards = pq.read_table(tmp_path / "out" / "shards")
    assert shards.num_rows == 40
    assert max(shards.column("call_rows").to_pylist()) <= 4
