"""Where a run's files live: a local folder or an object store, through ``pyarrow.fs``.

``Storage.at("out/")``, ``Storage.at("file:///data/out")`` and ``Storage.at("s3://bucket/out")``
give the same small interface, so the runner, the readers and the manifest never call
``os.path`` on output paths and a cluster can write its output to object storage
(every node sees the same bucket; a local folder is only shared on one machine).

Atomic writes: on a local filesystem a file is written under a temporary name and
renamed; on object stores an object only appears when its upload completes, so it is
written in place (a rename there is a copy).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import posixpath
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clipcurate.pipelines import limits
from clipcurate.pipelines.errors import UserError


_CREDENTIALS = re.compile(r"^([a-z0-9+.-]+://)[^/@]*:[^/@]*@", re.IGNORECASE)


def is_uri(location: str) -> bool:
    return "://" in str(location)


def cache_dir(location: str, kind: str, cache: str | os.PathLike | None = None) -> Path:
    """The local folder that stands in for ``location`` (an object-store URI) when a
    tool needs local files: ``<cache>/<kind>/<hash of location>/<its last name>``, where
    ``cache`` defaults to ``$CLIPCURATE_CACHE`` or the temp dir. Stable, so a rerun finds
    what an earlier one copied."""
    base = Path(cache or os.environ.get("CLIPCURATE_CACHE") or Path(tempfile.gettempdir()) / "clipcurate-cache")
    name = str(location).rstrip("/").rsplit("/", 1)[-1] or "root"
    return base / kind / hashlib.sha256(str(location).encode()).hexdigest()[:16] / name


@dataclass(frozen=True)
class Storage:
    """A filesystem and a root folder on it. Paths passed to methods are full paths
    on ``fs`` (as returned by :meth:`path`), so they can go straight to pyarrow/Ray."""

    fs: pafs.FileSystem
    root: str

    @classmethod
    def at(cls, location: str | os.PathLike) -> "Storage":
        location = str(location)
        if is_uri(location):
            if _CREDENTIALS.match(location):
                shown = _CREDENTIALS.sub(r"\1***@", location)
                raise UserError(f"{shown}: credentials in a URL end up in manifests and logs; set them in the "
                                f"environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; AWS_ENDPOINT_URL for other "
                                f"S3-compatible stores) or a credentials file")
            fs, root = pafs.FileSystem.from_uri(location)
            return cls(fs, root.rstrip("/") or "/")
        return cls(pafs.LocalFileSystem(), os.path.abspath(location))

    @property
    def local(self) -> bool:
        return self.fs.type_name == "local"

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if parts else self.root

    def child(self, *parts: str) -> "Storage":
        return Storage(self.fs, self.path(*parts))

    def uri(self, path: str | None = None) -> str:
        """A path as the user would write it (for messages and the manifest)."""
        path = self.root if path is None else path
        if self.local:
            return path
        return f"{self.fs.type_name}://{path}"

    # ------------------------------------------------------------------ queries

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def size(self, path: str) -> int:
        return self.fs.get_file_info(path).size

    def list_files(self, directory: str, suffix: str = "") -> list[str]:
        """Files directly in ``directory`` ending with ``suffix``, sorted; [] if it is absent."""
        selector = pafs.FileSelector(directory, allow_not_found=True, recursive=False)
        return sorted(info.path for info in self.fs.get_file_info(selector)
                      if info.type == pafs.FileType.File and info.base_name.endswith(suffix))

    # ------------------------------------------------------------------ changes

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def rmtree(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_dir(path)

    def move(self, src: str, dst: str) -> None:
        self.fs.move(src, dst)

    def move_files(self, src_dir: str, dst_dir: str) -> None:
        """Replace ``dst_dir`` with the files of ``src_dir`` (file by file: object stores
        cannot rename a folder)."""
        self.rmtree(dst_dir)
        self.makedirs(dst_dir)
        for path in self.list_files(src_dir):
            self.fs.move(path, posixpath.join(dst_dir, posixpath.basename(path)))

    def write_parquet(self, table: pa.Table, path: str) -> None:
        """Write ``table`` so that ``path`` is either absent or complete; a write that fails
        (a full disk) leaves no temporary file behind."""
        with self.open_output(path) as handle:
            pq.write_table(table, handle)

    def write_bytes(self, data: bytes, path: str) -> None:
        target = self._temporary(path)
        with self.fs.open_output_stream(target) as handle:
            handle.write(data)
        if target != path:
            self.fs.move(target, path)

    @contextlib.contextmanager
    def open_output(self, path: str):
        """A stream for a large file (a tar) with the same promise as ``write_bytes``:
        ``path`` is absent or complete, also when the writer fails half-way."""
        target = self._temporary(path)
        try:
            with self.fs.open_output_stream(target) as handle:
                yield handle
        except BaseException:  # closing an object-store stream completes the upload: remove it
            if self.exists(target):
                self.fs.delete_file(target)
            raise
        if target != path:
            self.fs.move(target, path)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as handle:
            return handle.read()

    def read_json(self, path: str):
        """A JSON file, refused unread beyond ``limits.JSON_MAX_BYTES``."""
        size = self.size(path)
        if size is not None and size > limits.JSON_MAX_BYTES:
            raise UserError(f"{self.uri(path)}: {size:,} bytes of JSON, more than the {limits.JSON_MAX_BYTES:,} "
                            f"this file may hold")
        return limits.parse_json(self.read_bytes(path), self.uri(path))

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """A parquet file whole, once its footer is checked against its size (``limits``)."""
        with self.fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            limits.check_parquet(parquet.metadata, handle.size(), self.uri(path))
            return parquet.read(columns=columns)

    def read_uids(self, path: str) -> pa.ChunkedArray:
        """A shard's uid column, refused unless every uid has make_uid's form: a uid names
        files (thumbnails, tar members), and shards come from other people's runs."""
        from clipcurate.pipelines.stage import check_uids

        with self.fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            limits.check_parquet(parquet.metadata, handle.size(), self.uri(path))
            if "uid" not in parquet.schema_arrow.names:
                raise UserError(f"{self.uri(path)}: no uid column (a shard of 'curate run' has one)")
            uids = parquet.read(columns=["uid"]).column("uid")
        check_uids(uids, self.uri(path))
        return uids

    def read_rows(self, path: str, rows: list[int], columns: list[str]) -> pa.Table:
        """Rows ``rows`` (indices in the file, in that order) of a parquet file, reading
        only the row groups that hold them (an image column stays where it is for the
        rest): what a thumbnail costs on object storage."""
        with self.fs.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle).metadata
        starts = [0]
        for g in range(meta.num_row_groups):
            starts.append(starts[-1] + meta.row_group(g).num_rows)
        picks = []
        for row in rows:
            if not 0 <= row < starts[-1]:
                raise IndexError(f"{path}: row {row} of {starts[-1]}")
            group = bisect.bisect_right(starts, row) - 1
            picks.append((group, row - starts[group]))
        return self.read_group_rows(path, picks, columns)

    def read_group_rows(self, path: str, picks: list[tuple[int, int]], columns: list[str]) -> pa.Table:
        """Rows given as ``(row group, row in it)`` pairs, in that order, reading each
        of those row groups once and no other (the columns the file lacks are left out)."""
        by_group: dict[int, list[int]] = {}
        for group, row in picks:
            by_group.setdefault(group, []).append(row)
        with self.fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            limits.check_parquet(parquet.metadata, handle.size(), self.uri(path))
            present = [c for c in columns if c in parquet.schema_arrow.names]
            parts, order = [parquet.schema_arrow.empty_table().select(present)], []
            for group, members in sorted(by_group.items()):
                table = parquet.read_row_group(group, columns=present)
                parts.append(table.take(pa.array(members, pa.int64())))
                order += [(group, row) for row in members]
        table = pa.concat_tables(parts)
        position = {pick: i for i, pick in enumerate(order)}
        return table.take(pa.array([position[pick] for pick in picks], pa.int64()))

    def push(self, local: str | os.PathLike, path: str, *, first: tuple[str, ...] = (),
             last: tuple[str, ...] = ()) -> int:
        """Copy the files under the local folder ``local`` to the folder ``path`` (same
        relative names, replacing what is there): files named in ``first``, the rest, then
        those named in ``last`` (a reader that checks the last ones sees the rest written).
        Returns the files copied."""
        local = Path(local)
        rank = lambda p: 0 if p.name in first else 2 if p.name in last else 1  # noqa: E731
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (rank(p), str(p)))
        for file in files:
            target = self.path(*file.relative_to(local).parts)
            with open(file, "rb") as source, self.open_output(target) as out:
                while chunk := source.read(8 << 20):
                    out.write(chunk)
        return len(files)

    def pull(self, path: str, local: str | os.PathLike, *, keep=lambda info: True) -> int:
        """Copy the files under folder ``path`` (those ``keep(FileInfo)`` accepts) to the
        local folder ``local``, each written under a temporary name and renamed, with the
        source's modification time; a file already there with the same size and time is
        kept (as rsync decides). Returns the files copied."""
        local = Path(local)
        copied = 0
        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not keep(info):
                continue
            target = local.joinpath(*info.path[len(path):].strip("/").split("/"))
            stamp = info.mtime_ns
            if target.is_file() and target.stat().st_size == info.size and (
                    stamp is None or target.stat().st_mtime_ns == stamp):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.part-{os.getpid()}")
            with self.fs.open_input_stream(info.path) as handle, open(partial, "wb") as out:
                while chunk := handle.read(8 << 20):
                    out.write(chunk)
            if stamp is not None:
                os.utime(partial, ns=(stamp, stamp))
            os.replace(partial, target)
            copied += 1
        return copied

    def parquet_rows(self, path: str) -> int:
        with self.fs.open_input_file(path) as handle:
            return pq.ParquetFile(handle).metadata.num_rows

    def _temporary(self, path: str) -> str:
        if not self.local:
            return path
        self.makedirs(posixpath.dirname(path))
        return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
