"""Bounded loading of the files other people hand us: model folders, head files, indexes,
run folders and releases.

A file can declare far more than it holds (a faiss vector length, a zip entry's size, a
parquet row group's size), and readers allocate what is declared before they read. So
every such load checks the declaration against the file's own size first and refuses
the file with one line naming it:

- JSON (manifests, index and model configs, train state): at most ``JSON_MAX_BYTES``;
- torch files (``torch.load``): the zip format only, every entry stored uncompressed and
  inside the file (torch itself then checks each tensor against its record);
- parquet: every column chunk inside the file, every row group within
  ``PARQUET_MAX_ROW_GROUP_BYTES`` uncompressed and at most ``PARQUET_MAX_EXPANSION``
  times its compressed size;
- faiss indexes: the serialized index is first opened in a forked child whose address
  space is capped at the current size plus ``FAISS_MEMORY_FACTOR`` times the file (faiss
  reads each array's length and allocates it before reading the array; an index in
  memory is about as large as its file), and loaded here only if that succeeded.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from clipcurate.pipelines.errors import UserError

JSON_MAX_BYTES = 256 << 20  # a manifest of a 100k-shard run is ~20 MB
PARQUET_MAX_ROW_GROUP_BYTES = 8 << 30
PARQUET_MAX_EXPANSION = 1000  # zstd on runs of one value reaches a few hundred
FAISS_MEMORY_FACTOR = 4
FAISS_MEMORY_SLACK = 256 << 20


def read_json(path: str | os.PathLike, *, max_bytes: int = JSON_MAX_BYTES) -> Any:
    """A local JSON file, refused unread when larger than ``max_bytes``."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path}: {size:,} bytes of JSON, more than the {max_bytes:,} this file may hold")
    return parse_json(path.read_bytes(), path)


def parse_json(data: bytes, where: object, *, max_bytes: int = JSON_MAX_BYTES) -> Any:
    """JSON bytes read from ``where``; a one-line error when too large or malformed."""
    if len(data) > max_bytes:
        raise UserError(f"{where}: {len(data):,} bytes of JSON, more than the {max_bytes:,} this file may hold")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise UserError(f"{where}: not valid JSON ({str(err).splitlines()[0][:120]})") from None


def check_torch_file(path: str | os.PathLike) -> None:
    """Refuse a ``torch.load`` file whose entries declare more than it holds: torch's zip
    reader allocates each entry at its declared size, and a compressed entry can expand
    without bound. ``torch.save`` writes every entry stored (uncompressed) since 1.6; the
    older tar format allocates each storage at its declared size and is refused."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"{path}: not a zip-format torch file ({err}); re-save it with torch.save") from None
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            raise UserError(f"{path}: entry {entry.filename!r} is compressed; torch.save never writes that")
        if entry.header_offset + entry.file_size > size:
            raise UserError(f"{path}: entry {entry.filename!r} declares {entry.file_size:,} bytes past the "
                            f"end of the {size:,}-byte file")


def check_parquet(metadata, size: int, where: object) -> None:
    """Refuse a parquet file whose footer declares column chunks beyond the file or row
    groups that would expand past the bounds above when read."""
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        compressed = uncompressed = 0
        for c in range(group.num_columns):
            chunk = group.column(c)
            start = min(o for o in (chunk.data_page_offset, chunk.dictionary_page_offset) if o is not None)
            if start < 0 or chunk.total_compressed_size < 0 or start + chunk.total_compressed_size > size:
                raise UserError(f"{where}: row group {g} column {chunk.path_in_schema!r} lies outside "
                                f"the {size:,}-byte file")
            compressed += chunk.total_compressed_size
            uncompressed += max(chunk.total_uncompressed_size, 0)
        if uncompressed > PARQUET_MAX_ROW_GROUP_BYTES or uncompressed > PARQUET_MAX_EXPANSION * max(compressed, 1):
            raise UserError(f"{where}: row group {g} declares {uncompressed:,} bytes from {compressed:,} stored; "
                            f"more than a parquet file may expand to")


def load_faiss_index(blob: bytes, where: object):
    """A faiss index from its serialized bytes, refused when it declares more than it
    holds (see the module docstring)."""
    import faiss
    import numpy as np

    data = np.frombuffer(blob, np.uint8)
    if not _loads_within(lambda: faiss.deserialize_index(data), FAISS_MEMORY_FACTOR * len(blob) + FAISS_MEMORY_SLACK):
        raise UserError(f"{where}: not a faiss index this file's {len(blob):,} bytes can hold "
                        f"(it declares more memory than it contains, or is corrupt)")
    try:
        return faiss.deserialize_index(data)
    except RuntimeError as err:
        raise UserError(f"{where}: not a readable faiss index ({str(err).splitlines()[0][:120]})") from None


def _loads_within(load, budget: int) -> bool:
    """Whether ``load()`` completes in a forked child allowed ``budget`` more bytes of
    address space than this process has now."""
    import resource

    current = _address_space()
    pid = os.fork()
    if pid == 0:  # the child: cap, try, report by exit status only
        status = 1
        try:
            limit = current + budget
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            load()
            status = 0
        except BaseException:  # noqa: BLE001 - any failure (MemoryError, faiss's RuntimeError) is a refusal
            status = 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _address_space() -> int:
    """This process's virtual size in bytes (what RLIMIT_AS counts)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")
