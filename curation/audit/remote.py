"""``curate audit s3://bucket/run``: the audit reads local files (polars scans, plots,
thumbnails), so a run in object storage is copied to a local cache first, audited there,
and its ``report/`` uploaded back beside the run (``RUN/report/``).

What is copied: ``manifest.json``, ``stats/``, ``rejects/``, ``shards/`` and ``index/``
(the shards carry the image bytes, so the copy costs the run's size in transfer and
disk; ``_work/`` is never copied). A rerun reuses cached files whose size matches.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.storage import Storage

FOLDERS = ("stats", "rejects", "shards", "index")


def cache_dir(uri: str, cache: str | None = None) -> Path:
    base = Path(cache or os.environ.get("CLIPCURATE_CACHE") or Path(tempfile.gettempdir()) / "clipcurate-audit")
    return base / hashlib.sha256(uri.encode()).hexdigest()[:16] / (uri.rstrip("/").rsplit("/", 1)[-1] or "run")


def download_run(uri: str, cache: str | None = None) -> Path:
    """Copy the parts of a run the audit reads into a local folder; returns it."""
    store = Storage.at(uri)
    if not store.exists(store.path("manifest.json")):
        raise UserError(f"{uri}: no manifest.json (not a finished run of curate run)")
    local = cache_dir(uri, cache)
    local.mkdir(parents=True, exist_ok=True)
    _copy(store, store.path("manifest.json"), local / "manifest.json")
    for folder in FOLDERS:
        selector = pafs.FileSelector(store.path(folder), recursive=True, allow_not_found=True)
        for info in store.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                relative = info.path[len(store.path(folder)):].lstrip("/")
                target = local / folder / relative
                if not (target.exists() and target.stat().st_size == info.size):
                    _copy(store, info.path, target)
    return local


def upload_report(local_run: Path, uri: str) -> str:
    """Upload ``local_run/report/`` to ``uri/report/`` (replacing it); returns its URL."""
    store = Storage.at(uri).child("report")
    store.rmtree(store.root)
    report = local_run / "report"
    for path in sorted(p for p in report.rglob("*") if p.is_file()):
        store.write_bytes(path.read_bytes(), store.path(*path.relative_to(report).parts))
    return store.uri(store.path("index.html"))


def _copy(store: Storage, source: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with store.fs.open_input_stream(source) as handle, open(partial, "wb") as out:
        while chunk := handle.read(8 << 20):
            out.write(chunk)
    os.replace(partial, target)
