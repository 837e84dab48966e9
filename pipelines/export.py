"""Hand a run's shards to the tools people train and filter with.

- **webdataset** tars (open_clip's ``--train-data``, most large-scale trainers): each kept
  row is one sample ``{uid}.{jpg|png|webp}`` (the stored bytes, never re-encoded),
  ``{uid}.txt`` (the caption) and ``{uid}.json`` (every column but the image and the
  embeddings, ``uid`` included, so DataComp's resharder and ``--format uids`` files apply
  to the tars); with ``embeddings`` also ``{uid}.<column>.npy``. Tars are written with
  Python's ``tarfile`` (``TarInfo.tobuf`` headers, ``TarFile.close``'s end of archive),
  byte for byte what webdataset's ``TarWriter`` writes for the same samples (fixed mtime
  and owner: the same shards give byte-identical tars), named ``000000.tar``,
  ``000001.tar`` ... in the order of the run's shards, and cut every ``shard_rows`` rows
  or, with ``shard_bytes``, about that many bytes (rows = target / the shards' mean row
  size from parquet metadata). One Ray task writes one tar
  (atomically: a tar is absent or complete) and the driver records it in
  ``_export/NNNNNN.json``; a rerun writes only the tars not recorded, and refuses an
  output planned from other shards or options (``force`` replaces it). ``manifest.json``
  comes last: rows, bytes and sha256 per tar, the source run, and the ``train_data``
  brace pattern and ``train_num_samples`` open_clip asks for.
- **uids**: a DataComp subset file (``baselines/apply_filter.py`` -> ``resharder.py``):
  a ``.npy`` of ``np.dtype("u8,u8")``, one entry per kept row, sorted, where an entry is
  the 128-bit uid split into its high and low 64 bits (``int(uid[:16], 16),
  int(uid[16:32], 16)``). Our uid is ``blake2b-128(url + "\\t" + caption)`` in hex
  (``pipelines.stage.make_uid``), so the file names the same pairs wherever the run
  came from; DataComp's own pool uids are derived differently, so our files select from
  our runs and exports, not from DataComp's pool.

Every shard's uids are checked against make_uid's form before anything is written: a
uid becomes a member name (``../../x.jpg`` would land two levels up when a tar is
extracted), and shards may come from other people's runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.stage import check_uids
from clipcurate.pipelines.storage import Storage

FORMATS = ("webdataset", "uids")
UID_DTYPE = np.dtype("u8,u8")
TAR_MODE, TAR_OWNER = 0o444, "clipcurate"  # webdataset TarWriter's mode; our user and group
TAR_MTIME = 0  # reproducible tars: the same rows give the same bytes (an int: a float mtime costs a pax header per member)
WORK = "_export"
# Embedding columns go to .npy members (with ``embeddings``), never into the JSON.
EMBEDDING_SUFFIX = "_emb"

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    """What to write and how: ``shard_rows`` rows per tar, or about ``shard_bytes``
    bytes; ``embeddings`` adds ``*_emb`` columns as ``.npy`` members; ``inline`` writes
    in this process instead of Ray tasks."""

    format: Literal["webdataset", "uids"] = "webdataset"
    shard_rows: int = 10_000
    shard_bytes: int | None = None
    embeddings: bool = False
    inline: bool = False
    address: str | None = None
    num_cpus: int | None = None
    force: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Slice:
    """Rows ``[start, stop)`` of row group ``group`` of ``path``."""

    path: str
    group: int
    start: int
    stop: int


@dataclass
class TarPlan:
    index: int
    name: str
    rows: int
    slices: list[Slice] = field(default_factory=list)


def export_run(run: str | Storage, output: str, options: ExportOptions | None = None) -> dict:
    """Export the kept rows of ``run`` (a run folder, or a folder of parquet shards, local
    or any pyarrow filesystem URI) to ``output``; returns the export manifest (for
    ``uids``: a summary of the written file)."""
    options = options or ExportOptions()
    if options.format not in FORMATS:
        raise UserError(f"--format {options.format}: expected one of {', '.join(FORMATS)}")
    source, shards = shard_files(run)
    if options.format == "uids":
        return write_uid_file(source, shards, output)
    started = time.time()
    check_shard_uids(source, shards)
    out = Storage.at(output)
    plan, identity = plan_tars(source, shards, options)
    finished, done = _resume(out, identity, options.force)
    if finished is not None:  # finished with the same plan: nothing to do
        return finished
    pending = [t for t in plan if t.name not in done]
    written = _write_tars(source, out, pending, options, len(plan))
    done.update(written)
    entries = [done[t.name] for t in plan]
    manifest = {
        "format": "webdataset", "source": source.uri(), "rows": sum(e["rows"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries), "tars": entries,
        "train_data": out.uri(out.path(_brace(len(plan)))), "train_num_samples": sum(e["rows"] for e in entries),
        "members": identity["members"], "options": identity["options"], "plan": identity["digest"],
        "resumed": len(plan) - len(pending), "wall_s": round(time.time() - started, 3),
    }
    out.write_bytes(json.dumps(manifest, indent=2).encode(), out.path("manifest.json"))
    out.rmtree(out.path(WORK))
    return manifest


# ------------------------------------------------------------------ uids

def uids_to_datacomp(uids: pa.Array | list[str]) -> np.ndarray:
    """Hex uids -> DataComp's sorted ``u8,u8`` array (vectorised: the hex becomes 16
    big-endian bytes per uid, which sort as the 128-bit numbers do)."""
    values = pa.array(uids, pa.string()) if not isinstance(uids, (pa.Array, pa.ChunkedArray)) else uids
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = values.cast(pa.string())
    if len(values) == 0:
        return np.zeros(0, UID_DTYPE)
    offsets = np.frombuffer(values.buffers()[1], np.int32)[values.offset:values.offset + len(values) + 1]
    if values.null_count or not np.all(np.diff(offsets) == 32):
        raise UserError("uids must be 32 hex digits (a 128-bit uid) on every row")
    text = np.frombuffer(values.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].tobytes()
    try:
        raw = np.frombuffer(bytes.fromhex(text.decode("ascii")), dtype="S16")
    except ValueError:
        raise UserError("uids must be hexadecimal") from None
    raw = np.sort(raw)
    pairs = raw.view(">u8").reshape(-1, 2).astype("<u8")
    out = np.empty(len(pairs), UID_DTYPE)
    out["f0"], out["f1"] = pairs[:, 0], pairs[:, 1]
    return out


def datacomp_to_uids(array: np.ndarray) -> list[str]:
    """The inverse: a ``u8,u8`` array back to 32-digit hex uids, in the array's order."""
    pairs = np.stack([array["f0"], array["f1"]], axis=1).astype(">u8")
    raw = pairs.tobytes()
    return [raw[i:i + 16].hex() for i in range(0, len(raw), 16)]


def write_uid_file(source: Storage, shards: list[str], output: str) -> dict:
    if not str(output).endswith(".npy"):
        raise UserError(f"--output {output}: a uid subset file is a .npy file (e.g. subset.npy)")
    columns = [source.read_uids(p) for p in shards]
    uids = pa.chunked_array(columns, type=pa.string()) if shards else pa.chunked_array([], pa.string())
    array = uids_to_datacomp(uids)
    if len(array) > 1 and not np.all(array[1:] != array[:-1]):
        raise UserError(f"{source.uri()}: a uid appears twice in the shards; a subset file lists each sample once")
    buffer = io.BytesIO()
    np.save(buffer, array)
    if "://" in str(output):
        fs, path = pafs.FileSystem.from_uri(str(output))
        target = Storage(fs, posixpath.dirname(path))
    else:
        target = Storage.at(os.path.dirname(os.path.abspath(output)))
    path = target.path(posixpath.basename(str(output)))
    target.write_bytes(buffer.getvalue(), path)
    return {"format": "uids", "source": source.uri(), "rows": int(len(array)), "output": target.uri(path),
            "dtype": "u8,u8", "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}


def check_shard_uids(source: Storage, shards: list[str]) -> None:
    """Refuse shards whose uids could not be member names, before any tar is written (one
    read of each shard's uid column, on the driver, so the error is the user's one line)."""
    for path in shards:
        source.read_uids(path)


# ------------------------------------------------------------------ plan

def shard_files(run: str | Storage) -> tuple[Storage, list[str]]:
    """The parquet shards of a run folder (``RUN/shards/``) or of a folder of shards."""
    store = run if isinstance(run, Storage) else Storage.at(run)
    if not store.exists(store.root):
        raise UserError(f"{store.uri()}: no such run or folder")
    if store.is_dir(store.path("shards")):
        store = store.child("shards")
    files = store.list_files(store.root, ".parquet")
    if not files:
        raise UserError(f"{store.uri()}: no parquet shards (give a run folder or a folder of shards)")
    return store, files


def plan_tars(source: Storage, shards: list[str], options: ExportOptions) -> tuple[list[TarPlan], dict]:
    """Cut the shards' rows into tars, from parquet metadata only. Returns the plan and
    what identifies it (shards by name, rows and size; the options that change bytes)."""
    groups, described, total_bytes, schema = [], [], 0, None
    for path in shards:
        with source.fs.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle).metadata
            schema = schema or meta.schema.to_arrow_schema()
        for g in range(meta.num_row_groups):
            groups.append((path, g, meta.row_group(g).num_rows))
            total_bytes += meta.row_group(g).total_byte_size
        described.append([posixpath.basename(path), meta.num_rows, source.size(path)])
    rows_total = sum(r for _, _, r in groups)
    if "image" not in schema.names:
        raise UserError(f"{source.uri()}: the shards hold no image column (a run without a download stage); "
                        f"webdataset samples need images")
    per_tar = options.shard_rows
    if options.shard_bytes:
        per_tar = max(1, int(options.shard_bytes // max(1.0, total_bytes / max(1, rows_total))))
    if per_tar < 1:
        raise UserError("--shard-rows must be at least 1")
    count = max(1, -(-rows_total // per_tar))
    plan = [TarPlan(i, f"{i:06d}.tar", 0) for i in range(count)]
    position = 0
    for path, group, rows in groups:
        start = 0
        while start < rows:
            tar = plan[position // per_tar]
            take = min(rows - start, per_tar - position % per_tar)
            tar.slices.append(Slice(path, group, start, start + take))
            tar.rows += take
            start += take
            position += take
    members = _members(schema, options.embeddings)
    settings = {"shard_rows": options.shard_rows, "shard_bytes": options.shard_bytes,
                "embeddings": options.embeddings, "rows_per_tar": per_tar}
    identity = {"shards": described, "options": settings, "members": members}
    identity["digest"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return plan, identity


def _members(schema: pa.Schema, embeddings: bool) -> dict:
    emb = [f.name for f in schema if f.name.endswith(EMBEDDING_SUFFIX) and _is_vector(f.type)]
    skip = {"image", *emb} | {f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)}
    return {"json": [f.name for f in schema if f.name not in skip], "npy": emb if embeddings else [],
            "txt": "caption" if "caption" in schema.names else None}


def _is_vector(kind: pa.DataType) -> bool:
    return (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)) and pa.types.is_floating(kind.value_type)


def _brace(count: int) -> str:
    return "000000.tar" if count == 1 else f"{{000000..{count - 1:06d}}}.tar"


def _resume(out: Storage, identity: dict, force: bool):
    """(the finished manifest of this plan or None, the tars already written {name: entry})."""
    work = out.path(WORK)
    if out.exists(out.path("manifest.json")):
        manifest = out.read_json(out.path("manifest.json"))
        if manifest.get("plan") == identity["digest"] and not force:
            return manifest, {}
        if not force:
            raise UserError(f"{out.uri()} holds an export of other shards or options; give --force to replace it "
                            f"or another --output")
    recorded = out.path(WORK, "plan.json")
    if out.exists(recorded):
        previous = out.read_json(recorded)
        if previous.get("digest") != identity["digest"]:
            if not force:
                raise UserError(f"{out.uri()} holds an unfinished export of other shards or options; give --force "
                                f"to replace it or another --output")
            out.rmtree(work)
    if force:
        for path in out.list_files(out.root, ".tar") + out.list_files(out.root, ".json"):
            out.fs.delete_file(path)
        out.rmtree(work)
    out.makedirs(work)
    if not out.exists(recorded):
        out.write_bytes(json.dumps(identity).encode(), recorded)
    done = {}
    for path in out.list_files(work, ".json"):
        if posixpath.basename(path) != "plan.json":
            entry = out.read_json(path)
            done[entry["name"]] = entry
    return None, done


# ------------------------------------------------------------------ write

def _write_tars(source: Storage, out: Storage, pending: list[TarPlan], options: ExportOptions,
                total: int) -> dict:
    """Write the pending tars (Ray tasks, or inline) and record each as it lands."""
    members = _members(_schema(source, pending), options.embeddings) if pending else None
    written = {}

    def record(entry: dict) -> None:
        out.write_bytes(json.dumps(entry).encode(), out.path(WORK, entry["name"].replace(".tar", ".json")))
        written[entry["name"]] = entry
        if options.progress:
            print(f"\rexport: {total - len(pending) + len(written)}/{total} tars", end="", flush=True)

    if not pending:
        return written
    if options.inline or len(pending) == 1:
        for tar in pending:
            record(write_tar(source, out, tar, members))
    else:
        import ray

        if not ray.is_initialized():
            address = options.address or os.environ.get("RAY_ADDRESS")
            kwargs = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": True}
            ray.init(address=address, **kwargs) if address else ray.init(
                address="local", num_cpus=options.num_cpus, **kwargs)
        task = ray.remote(num_cpus=1, max_retries=3)(write_tar)
        waiting = [task.remote(source, out, tar, members) for tar in pending]
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            record(ray.get(ready[0]))
    if options.progress:
        print()
    return written


def _schema(source: Storage, plan: list[TarPlan]) -> pa.Schema:
    with source.fs.open_input_file(plan[0].slices[0].path) as handle:
        return pq.ParquetFile(handle).schema_arrow


def write_tar(source: Storage, out: Storage, tar: TarPlan, members: dict) -> dict:
    """Write one tar from its row slices; returns its manifest entry.

    The members go through Python's ``tarfile``: one reused ``TarInfo`` (name and size
    set per member) gives each header with ``TarInfo.tobuf`` (ustar), the data follows
    padded to a 512-byte block, as ``TarFile.addfile`` writes it, and ``TarFile.close``
    ends the archive; the bytes equal webdataset's ``TarWriter`` output for the same
    samples (``tests/pipelines/test_export.py`` checks it). What ``addfile`` adds per
    member and we skip: a copy of the ``TarInfo``, a ``BytesIO`` per member, a member
    list, one filesystem write per piece. Only the columns the samples need are read;
    the uids that name the members are checked as they are read."""
    import polars as pl

    digest = hashlib.sha256()
    by_file: dict[str, list[Slice]] = {}
    for piece in tar.slices:
        by_file.setdefault(piece.path, []).append(piece)
    columns = needed_columns(members)
    path = out.path(tar.name)
    with out.open_output(path) as stream:
        sink = _HashingSink(stream, digest)
        try:
            archive = tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT)
            info = tarfile.TarInfo()
            info.mtime, info.mode, info.uname, info.gname = TAR_MTIME, TAR_MODE, TAR_OWNER, TAR_OWNER
            for file, pieces in by_file.items():
                with source.fs.open_input_file(file) as handle:
                    parquet = pq.ParquetFile(handle)
                    present = [c for c in columns if c in parquet.schema_arrow.names]
                    starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows
                                              for g in range(parquet.metadata.num_row_groups)])
                    for piece in pieces:
                        table = parquet.read_row_group(piece.group, columns=present)
                        table = table.slice(piece.start, piece.stop - piece.start)
                        first = int(starts[piece.group]) + piece.start
                        check_uids(table.column("uid"), source.uri(file), rows=range(first, first + table.num_rows))
                        for batch in table.to_batches():
                            archive.offset += _write_rows(sink, info, archive, batch, members, pl)
            archive.close()  # tarfile's end of archive: two zero blocks, padding to a 10 KiB record
        finally:
            sink.close()
    return {"name": tar.name, "rows": tar.rows, "bytes": sink.size, "sha256": digest.hexdigest()}


def needed_columns(members: dict) -> list[str]:
    """The shard columns a webdataset export reads (the JSON's, the image, the caption,
    the ``.npy`` embeddings): embeddings not asked for stay on disk."""
    wanted = list(members["json"]) + ["image"] + ([members["txt"]] if members["txt"] else []) + list(members["npy"])
    return list(dict.fromkeys(wanted))


_PADDING = [tarfile.NUL * ((tarfile.BLOCKSIZE - r) % tarfile.BLOCKSIZE) for r in range(tarfile.BLOCKSIZE)]


def _write_rows(sink, info: tarfile.TarInfo, archive: tarfile.TarFile, table: pa.RecordBatch, members: dict,
                pl) -> int:
    """Write ``table``'s rows as samples to ``sink``; returns the bytes written. Members
    of a sample go in sorted suffix order, as ``TarWriter.write`` orders them."""
    n = table.num_rows
    if not n:
        return 0
    image_column = table.column("image")
    if image_column.null_count:
        missing = table.filter(image_column.is_null()).column("uid")[0].as_py()
        raise UserError(f"row {missing} has no image bytes; shards hold kept rows with images")
    uids = table.column("uid").to_pylist()
    images, image_at = _binary_values(image_column)
    fixed: dict[str, tuple] = {}
    if members["txt"]:
        fixed["txt"] = _binary_values(table.column(members["txt"]).fill_null(""))
    lines = pl.from_arrow(table.select(members["json"])).write_ndjson().encode().splitlines()
    npy = {f"{name}.npy": _npy_rows(table.column(name)) for name in members["npy"]}
    orders: dict[str, list[str]] = {}  # image extension -> the sample's member suffixes, sorted
    tobuf, args, padding, block = info.tobuf, (archive.format, archive.encoding, archive.errors), _PADDING, tarfile.BLOCKSIZE
    pieces, pending, written, chunk = [], 0, 0, sink.chunk
    for i in range(n):
        uid = uids[i]
        start, stop = image_at[i], image_at[i + 1]
        extension = _extension(bytes(images[start:start + 12]), uid)
        order = orders.get(extension)
        if order is None:
            order = orders[extension] = sorted([extension, "json", *fixed, *npy])
        for suffix in order:
            if suffix == extension:
                data = images[start:stop]
            elif suffix == "json":
                data = lines[i]
            elif suffix in fixed:
                values, at = fixed[suffix]
                data = values[at[i]:at[i + 1]]
            else:
                data = npy[suffix](i)
            size = len(data)
            info.name, info.size = f"{uid}.{suffix}", size
            header = tobuf(*args)
            pad = padding[size % block]
            pieces += (header, data, pad)
            pending += len(header) + size + len(pad)
        if pending >= chunk:
            sink.extend(pieces, pending)
            pieces, written, pending = [], written + pending, 0
    sink.extend(pieces, pending)
    return written + pending


def _binary_values(column) -> tuple[memoryview, list[int]]:
    """A binary or string column's value bytes and its n + 1 offsets (no copy per row)."""
    array = column
    if isinstance(array, pa.ChunkedArray):  # combine_chunks copies even a single chunk
        array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    kind = array.type
    if not (pa.types.is_binary(kind) or pa.types.is_string(kind) or pa.types.is_large_binary(kind)
            or pa.types.is_large_string(kind)):
        array = array.cast(pa.large_binary())
        kind = array.type
    width = np.int64 if pa.types.is_large_binary(kind) or pa.types.is_large_string(kind) else np.int32
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], width)[array.offset:array.offset + len(array) + 1]
    values = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
    return values.cast("B"), offsets.tolist()


def _npy_rows(column):
    """``i -> np.save bytes of row i``. Rows of one length share np.save's header, so it
    is made once (by np.save of the first row) and each row's bytes follow it."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = column.value_lengths().to_numpy(zero_copy_only=False) if len(column) else np.zeros(0)
    if column.null_count or (len(lengths) and not np.all(lengths == lengths[0])):
        rows = column.to_pylist()
        kind = column.type.value_type.to_pandas_dtype()
        return lambda i: _npy(np.asarray(rows[i] if rows[i] is not None else [], kind))
    vectors = np.ascontiguousarray(column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1))
    head = _npy(vectors[0])[:-vectors[0].nbytes or None] if len(vectors) else b""
    return lambda i: head + vectors[i].tobytes()


def _npy(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vector)
    return buffer.getvalue()


def _extension(data: bytes, uid: str) -> str:
    """The member extension of the stored encoding (webdataset and open_clip pick the
    decoder by extension)."""
    head = data[:12]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"GIF8",):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    raise UserError(f"row {uid}: image bytes in an unknown encoding (not JPEG, PNG, WebP, GIF, BMP or TIFF)")


class _HashingSink:
    """A write-only stream that hashes and counts what passes through to ``stream``.
    Pieces (headers, data, padding) are collected and joined into chunks of ``chunk``
    bytes; a background thread hashes each chunk and writes it (``hashlib`` and pyarrow
    release the GIL), so hashing and writing overlap the Python loop that builds headers.
    ``close`` drains it and raises what the thread raised."""

    def __init__(self, stream, digest, chunk: int = 8 << 20):
        import queue
        import threading

        self.stream, self.digest, self.size, self.chunk = stream, digest, 0, chunk
        self.parts: list = []
        self.pending = 0
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._drain, name="tar-writer", daemon=True)
        self.thread.start()

    def write(self, data) -> int:
        size = len(data)
        self.parts.append(data)
        self.pending += size
        self.size += size
        if self.pending >= self.chunk:
            self.flush()
        return size

    def extend(self, pieces: list, size: int) -> None:
        """``write`` of each of ``pieces`` (``size`` bytes in all), in one call."""
        self.parts += pieces
        self.pending += size
        self.size += size
        if self.pending >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if self.error is not None:
            raise self.error
        if self.parts:
            self.queue.put(b"".join(self.parts))
            self.parts, self.pending = [], 0

    def _drain(self) -> None:
        while (chunk := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.digest.update(chunk)
                    self.stream.write(chunk)
                except BaseException as err:  # noqa: BLE001 - raised in the writing thread by flush/close
                    self.error = err

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        """Write what is left and stop the thread (also after a failure: the Storage
        context then removes the partial file)."""
        if self.thread.is_alive():
            try:
                if self.error is None:
                    self.queue.put(b"".join(self.parts))
                self.parts, self.pending = [], 0
            finally:
                self.queue.put(None)
                self.thread.join()
        if self.error is not None:
            raise self.error
