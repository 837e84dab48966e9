"""``curate audit s3://bucket/run``: the audit's statistics are polars scans of local
files, so a run in object storage is mirrored into a local cache, audited there, and
its ``report/`` uploaded back beside the run (``RUN/report/``).

The mirror holds ``manifest.json``, ``stats/``, ``rejects/`` and the shards *without
their image bytes* (every column but the binary ones, read by column from the store:
a run's size is mostly images, and the statistics never read them). The images the
report shows (the sampled thumbnails, the nearest-neighbour grids) are read from the
run in the store, row group by row group, for those rows only. ``remote.json`` in the
mirror names the run it stands for. A rerun reuses mirrored files whose source has the
same size; ``_work/`` and ``index/`` are never copied (the neighbour grids read the
index where it is).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.limits import read_json
from clipcurate.pipelines.stage import check_uids
from clipcurate.pipelines.storage import Storage, cache_dir

COPIED = ("stats", "rejects")
SOURCE = "remote.json"


def download_run(uri: str, cache: str | None = None) -> Path:
    """Mirror the parts of a run the audit reads into a local folder; returns it."""
    store = Storage.at(uri)
    if not store.exists(store.path("manifest.json")):
        raise UserError(f"{uri}: no manifest.json (not a finished run of curate run)")
    local = cache_dir(uri, "audit", cache)
    local.mkdir(parents=True, exist_ok=True)
    (local / "manifest.json").write_bytes(store.read_bytes(store.path("manifest.json")))
    for folder in COPIED:
        store.pull(store.path(folder), local / folder)
    recorded = _read_source(local).get("shards", {})
    shards = {}
    for path in store.list_files(store.path("shards"), ".parquet"):
        name, size = path.rsplit("/", 1)[-1], store.size(path)
        target = local / "shards" / name
        if not (target.is_file() and recorded.get(name) == size):
            _copy_without_images(store, path, target)
        shards[name] = size
    for stale in set(recorded) - set(shards):
        (local / "shards" / stale).unlink(missing_ok=True)
    (local / SOURCE).write_text(json.dumps({"uri": store.uri(), "shards": shards}))
    return local


def source_of(local_run: str | Path) -> str | None:
    """The object-store run a mirror stands for, or None for a run audited in place."""
    return _read_source(Path(local_run)).get("uri")


def read_images(local_run: str | Path, rows: dict[str, list[int]]) -> dict[str, bytes | None]:
    """``uid -> image bytes`` for ``{shard file name: row indices}`` of a mirrored run,
    read from the run in the store (only the row groups holding those rows)."""
    uri = source_of(local_run)
    if uri is None:
        return {}
    shards = Storage.at(uri).child("shards")
    found: dict[str, bytes | None] = {}
    for name, indices in rows.items():
        table = shards.read_rows(shards.path(name), indices, ["uid", "image"])
        check_uids(table.column("uid"), shards.uri(shards.path(name)), rows=indices)  # the store may differ from the mirror
        if "image" in table.column_names:
            found.update(zip(table.column("uid").to_pylist(), table.column("image").to_pylist()))
    return found


def upload_report(local_run: Path, uri: str) -> str:
    """Upload ``local_run/report/`` to ``uri/report/`` (replacing it); returns its URL."""
    store = Storage.at(uri).child("report")
    store.rmtree(store.root)
    store.push(local_run / "report", store.root)
    return store.uri(store.path("index.html"))


def _copy_without_images(store: Storage, path: str, target: Path) -> None:
    """The shard's every column but the binary ones, row group by row group (so memory
    holds one group's small columns), written under a temporary name and renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with store.fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
        columns = [f.name for f in schema if not (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type))]
        with pq.ParquetWriter(partial, pa.schema([schema.field(c) for c in columns], schema.metadata)) as writer:
            for group in range(parquet.metadata.num_row_groups):
                writer.write_table(parquet.read_row_group(group, columns=columns))
    partial.replace(target)


def _read_source(local: Path) -> dict:
    path = local / SOURCE
    return read_json(path) if path.is_file() else {}
