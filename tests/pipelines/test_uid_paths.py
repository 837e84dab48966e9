"""A uid names files (the audit's thumbnails, webdataset members): shards, releases and a
release cache whose uids are not make_uid's form are refused with one line that names
the file and the row, and nothing is written outside the output."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipcurate.curation.audit.synthetic import write_synthetic_run
from clipcurate.pipelines.cli import main as curate
from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.stage import check_uids, make_uid

GOOD = make_uid("https://img.example.com/1.jpg", "a red bicycle")
POISONED_ROW = 5


def bad_uids(root: Path) -> list[str]:
    """Uids that would leave the output: up and out, absolute (inside the test's folder,
    so a regression cannot write to the real /abs), and a sub-folder."""
    return ["../../../../x", f"{root}/abs/x", "a/b"]


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


def poison(shard: Path, uids: list[str], first: int = POISONED_ROW) -> None:
    """Rewrite ``shard`` with ``uids`` at rows ``first``, ``first + 2``, ..."""
    table = pq.read_table(shard)
    values = table.column("uid").to_pylist()
    for i, uid in enumerate(uids):
        values[first + 2 * i] = uid
    table = table.set_column(table.column_names.index("uid"), "uid", pa.array(values, pa.string()))
    pq.write_table(table, shard)


def assert_one_line(message: str, shard: Path | str, uid: str) -> None:
    assert "\n" not in message.strip()
    assert str(shard) in message and f"row {POISONED_ROW}:" in message and repr(uid) in message


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """A run with JPEG bytes for every kept row, in shards of 60 rows."""
    return write_synthetic_run(tmp_path_factory.mktemp("uids") / "run", 400, seed=5, images=True,
                               shard_rows=60).out


@pytest.fixture
def poisoned(clean_run, tmp_path):
    """(a copy of the run with bad uids in its first shard, that shard, the first bad uid)."""
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    shard = sorted((run / "shards").glob("*.parquet"))[0]
    uids = bad_uids(tmp_path)
    poison(shard, uids)
    return run, shard, uids[0]


# ------------------------------------------------------------------ the rule

@pytest.mark.parametrize("uid", [GOOD, "0" * 32, "f" * 32, make_uid("", "")])
def test_the_rule_takes_the_uids_make_uid_writes(uid):
    check_uids(pa.chunked_array([[GOOD], [uid]]), "shard.parquet")
    check_uids(pa.array([uid], pa.large_string()), "shard.parquet")
    check_uids(pa.array([uid]).dictionary_encode(), "shard.parquet")
    check_uids(pa.array([], pa.string()), "shard.parquet")


@pytest.mark.parametrize("uid", [
    GOOD.upper(), GOOD[:31], GOOD + "0", GOOD[:16] + "/" + GOOD[17:], GOOD[:16] + "\\" + GOOD[17:],
    GOOD[:16] + "\x00" + GOOD[17:], GOOD + "\n", "\n" + GOOD, "", None, "../../x", "/abs/x", "a/b",
    "g" * 32, " " + GOOD[1:], "é" * 32, "x" * 500,
])
def test_the_rule_refuses_everything_else_naming_file_row_and_value(uid):
    with pytest.raises(UserError) as raised:
        check_uids(pa.chunked_array([[GOOD, GOOD], [GOOD, uid]]), "run/shards/part-00001.parquet")
    message = str(raised.value)
    assert message.startswith("run/shards/part-00001.parquet: row 3: uid ") and "\n" not in message
    assert ("null" if uid is None else repr(uid)[:40]) in message and len(message) < 200


def test_the_rule_names_the_file_row_when_given_rows():
    with pytest.raises(UserError, match=r"^s.parquet: row 41: uid 'a/b' "):
        check_uids(pa.array([GOOD, "a/b"]), "s.parquet", rows=[7, 41])
    with pytest.raises(UserError, match="the uid column holds int64, not strings"):
        check_uids(pa.array([1, 2]), "s.parquet")


# ------------------------------------------------------------------ the audit

def test_audit_refuses_bad_uids_before_any_thumbnail(poisoned, tmp_path, capsys):
    run, shard, first = poisoned
    before = files_under(tmp_path)
    assert curate(["audit", str(run)]) == 2
    assert_one_line(capsys.readouterr().err, shard, first)
    written = files_under(tmp_path) - before
    assert all(p.parts[:2] == ("run", "report") for p in written), written
    assert not [p for p in written if p.suffix == ".jpg"]


def test_audit_of_the_clean_run_still_writes_thumbnails(clean_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    assert curate(["audit", str(run)]) == 0
    assert len(list((run / "report" / "assets" / "thumbs-a").glob("*.jpg"))) >= 24  # and the duplicated originals


# ------------------------------------------------------------------ the export

@pytest.mark.parametrize("fmt,output", [("webdataset", "wds"), ("uids", "subset.npy")])
def test_export_refuses_bad_uids_and_writes_nothing(poisoned, tmp_path, capsys, fmt, output):
    run, shard, first = poisoned
    before = files_under(tmp_path)
    assert curate(["export", str(run), "--format", fmt, "--output", str(tmp_path / output), "--quiet"]) == 2
    assert_one_line(capsys.readouterr().err, shard, first)
    assert files_under(tmp_path) == before and not (tmp_path / output).exists()


def test_a_tar_writer_handed_bad_uids_refuses_them_too(poisoned, tmp_path):
    """The member names are checked where they are made (a Ray task), not only up front."""
    from clipcurate.pipelines.export import ExportOptions, _members, plan_tars, shard_files, write_tar
    from clipcurate.pipelines.storage import Storage

    run, shard, first = poisoned
    source, shards = shard_files(str(run))
    plan, _ = plan_tars(source, shards, ExportOptions(shard_rows=1_000))
    members = _members(pq.read_schema(shards[0]), False)
    out = tmp_path / "wds"
    out.mkdir()
    before = files_under(tmp_path)
    with pytest.raises(UserError) as raised:
        write_tar(source, Storage.at(str(out)), plan[0], members)
    assert_one_line(str(raised.value), shard, first)
    assert files_under(tmp_path) == before


# ------------------------------------------------------------------ --against releases

def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_release(folder: Path, uids: list[str]) -> tuple[str, Path]:
    """A finished run's folder as --against reads it: one shard and a manifest listing it."""
    shard = folder / "shards" / "part-00000.parquet"
    shard.parent.mkdir(parents=True)
    n = len(uids)
    pq.write_table(pa.table({"uid": pa.array(uids, pa.string()), "caption": [f"c{i}" for i in range(n)],
                             "image": pa.array([_png(i) for i in range(n)], pa.binary())}), shard)
    manifest = {"totals": {"input": n, "kept": n, "rejected": 0}, "stages": [], "stats": {},
                "shards": [{"path": "shards/part-00000.parquet", "rows": n, "bytes": shard.stat().st_size}],
                "fingerprint": {"input": "test"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder), shard


def _fit(context, ray):
    from clipcurate.dedup.exact import ExactDedup

    n = 4
    pool = pa.table({"uid": [make_uid(f"http://new/{i}", "x") for i in range(n)], "caption": ["x"] * n,
                     "image": pa.array([_png(100 + i) for i in range(n)], pa.binary()),
                     "clip_score": pa.array([0.3] * n, pa.float32()), "reject": pa.nulls(n, pa.string())})
    stage = ExactDedup()
    stage.context = context
    prepared = stage.prepare(pool)
    stage.fit(ray.data.from_arrow(prepared))
    return stage(prepared)


def test_against_refuses_a_release_with_bad_uids_and_caches_nothing(ray_local, tmp_path):
    from clipcurate.pipelines.release import open_context

    uids = [make_uid(f"http://old/{i}", f"c{i}") for i in range(8)]
    uids[POISONED_ROW] = "../../x"
    location, shard = write_release(tmp_path / "release", uids)
    context = open_context([location], cache=str(tmp_path / "cache"))
    before = files_under(tmp_path)
    with pytest.raises(UserError) as raised:
        _fit(context, ray_local)
    assert type(raised.value) is UserError  # not Ray's wrapper, whose text is a traceback
    assert_one_line(str(raised.value), shard, "../../x")
    assert files_under(tmp_path) == before


def test_against_refuses_a_shared_cache_with_bad_uids(ray_local, tmp_path):
    from clipcurate.pipelines.release import open_context

    location, _ = write_release(tmp_path / "release", [make_uid(f"http://old/{i}", f"c{i}") for i in range(8)])
    context = open_context([location], cache=str(tmp_path / "cache"))
    assert _fit(context, ray_local).num_rows == 4  # derives the release's hashes into the cache
    [cached] = sorted((tmp_path / "cache").rglob("*.parquet"))
    poison(cached, ["/abs/x"])
    with pytest.raises(UserError) as raised:
        _fit(context, ray_local)
    assert_one_line(str(raised.value), cached, "/abs/x")
