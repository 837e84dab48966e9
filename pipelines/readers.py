"""Input readers: URL + caption lists in parquet, csv/tsv or jsonl, split into
fixed-size partitions of the sample schema (img2dataset's reader does the same).

Partitions are written once to ``<work>/input/`` so a rerun reads identical rows in
identical order, and every row gets its ``uid`` here. A repeated (url, caption) row
is kept in the accounting but rejected as ``input:duplicate_row``; an empty caption
is rejected as ``input:empty_caption``. A txt input (img2dataset's one URL per line)
is refused for that reason: none of its rows could ever be kept.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from clipcurate.pipelines.errors import InputError
from clipcurate.pipelines.recipe import InputConfig
from clipcurate.pipelines.stage import REJECT, SAMPLE_SCHEMA, make_uid
from clipcurate.pipelines.storage import Storage, is_uri

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}


def input_files(spec: str | list[str]) -> list[str]:
    """Expand a path, directory or glob (or a list of them) into sorted input files.

    Local paths, or URIs of any pyarrow filesystem (``s3://bucket/pool/*.parquet``)."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files: list[str] = []
    for item in specs:
        item = str(item)
        if is_uri(item):
            files.extend(_remote_files(item))
            continue
        if os.path.isdir(item):
            found = sorted(p for p in glob.glob(os.path.join(item, "*")) if Path(p).suffix in FORMATS)
        else:
            found = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        for path in found:
            if not os.path.exists(path):
                raise InputError(f"{path}: input file not found")
        files.extend(found)
    if not files:
        raise InputError(f"{spec}: no input files found")
    return files


def _remote_files(uri: str) -> list[str]:
    store = Storage.at(uri)
    if any(c in store.root for c in "*?["):
        parent, pattern = posixpath.split(store.root)
        found = [p for p in store.list_files(parent) if fnmatch.fnmatch(posixpath.basename(p), pattern)]
    elif store.is_dir(store.root):
        found = [p for p in store.list_files(store.root) if Path(p).suffix in FORMATS]
    elif store.exists(store.root):
        found = [store.root]
    else:
        raise InputError(f"{uri}: input file not found")
    return [store.uri(p) for p in found]


def input_fingerprint(spec, config: InputConfig) -> list:
    """What identifies the input: each file's place, size and mtime, and how it is read."""
    return json.loads(json.dumps(files_fingerprint(spec) + [config.model_dump()]))


def files_fingerprint(spec) -> list:
    """Each input file's place, size and mtime (cheap: no content read)."""
    return [_fingerprint(f) for f in input_files(spec)]


def _fingerprint(path: str) -> list:
    """What identifies an input file's content cheaply: where it is, its size and mtime."""
    store = Storage.at(path)
    info = store.fs.get_file_info(store.root)
    mtime = int(info.mtime.timestamp()) if info.mtime is not None else None
    return [path if is_uri(path) else store.root, info.size, mtime]


JSONL_MAX_BLOCK = 1 << 30


def read_input_table(path: str, config: InputConfig) -> pa.Table:
    """One input file as an Arrow table with ``url`` and ``caption`` string columns."""
    fmt = config.format if config.format != "auto" else FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: cannot tell the input format from the extension; set input.format")
    if fmt == "txt":
        raise InputError(
            f"{path}: a txt input holds URLs only, and a row without a caption is always rejected "
            f"(input:empty_caption); give a csv, tsv, jsonl or parquet with a caption column (input.caption_col)"
        )
    store = Storage.at(path)
    fs, location = store.fs, store.root
    if store.size(location) == 0:
        raise InputError(f"{path}: input file is empty")
    try:
        if fmt == "parquet":
            table = store.read_parquet(location)
        elif fmt in ("csv", "tsv"):
            table = pacsv.read_csv(
                fs.open_input_stream(location),
                parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={config.url_col: pa.string(), config.caption_col: pa.string()}
                ),
            )
        else:
            # one block for the whole file: Arrow's merge of types inferred in different blocks
            # crashes the process on some inputs (a [] in one block, a long string in the next;
            # apache/arrow#11044 is of that kind); beyond the int32 block limit, 1 GiB blocks
            block = min(store.size(location) + 1, JSONL_MAX_BLOCK)
            table = pajson.read_json(fs.open_input_stream(location), read_options=pajson.ReadOptions(block_size=block))
        table.validate(full=True)  # the JSON and parquet readers let invalid UTF-8 through
        table.column_names  # noqa: B018 - decoded here: a header cell of invalid UTF-8 fails now
    except UnicodeDecodeError:
        raise InputError(f"{path}: a column name is not valid UTF-8") from None
    except pa.ArrowInvalid as err:
        message = " ".join(str(err).split())
        if "UTF8" in message or "utf-8" in message.lower():
            raise InputError(f"{path}: text is not valid UTF-8{_bad_line(store, fmt) or f' ({message})'}") from None
        raise InputError(f"{path}: cannot read as {fmt} ({message})") from None
    except OSError as err:  # a parquet file's broken footer, page or compression
        if fmt != "parquet" or isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        raise InputError(f"{path}: cannot read as parquet ({' '.join(str(err).split())})") from None
    return _normalise_columns(table, path, config)


def _bad_line(store: Storage, fmt: str) -> str:
    """Where the first invalid UTF-8 is in a text input (`` at line N (byte M)``); the
    file is read again only when the reader has already failed."""
    if fmt == "parquet":
        return ""
    for number, line in enumerate(store.read_bytes(store.root).split(b"\n"), 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            return f" at line {number} (byte {err.start + 1})"
    return ""


def _normalise_columns(table: pa.Table, path: str, config: InputConfig) -> pa.Table:
    if table.num_rows == 0:
        raise InputError(f"{path}: input has no rows")
    twice = sorted({_shown(n) for n in table.column_names if table.column_names.count(n) > 1})
    if twice:
        raise InputError(f"{path}: column {', '.join(twice)} appears more than once")
    for role, column in (("url", config.url_col), ("caption", config.caption_col)):
        if column not in table.column_names:
            have = ", ".join(map(_shown, table.column_names))
            raise InputError(f"{path}: no {role} column '{column}' (columns: {have}); set input.{role}_col")
    columns = {}
    for role, column in (("url", config.url_col), ("caption", config.caption_col)):
        values = table.column(column)
        if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
            try:
                values = values.cast(pa.string())
            except pa.ArrowInvalid:
                raise InputError(f"{path}: column '{column}' is not valid UTF-8") from None
        elif not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type) or pa.types.is_null(values.type)):
            raise InputError(f"{path}: column '{column}' should hold text, found {values.type}")
        columns[role] = values.cast(pa.string())
    columns.update(_carried_images(table, path))
    extras = {
        name: table.column(name)
        for name in table.column_names
        if name not in (config.url_col, config.caption_col) and name not in SAMPLE_SCHEMA.names
    }
    table = _keep_field_metadata(pa.table({**columns, **extras}), table.schema)
    try:  # carried columns go into parquet partitions: an empty JSON object ({}) cannot
        pq.write_table(table.schema.empty_table(), io.BytesIO())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as err:
        raise InputError(f"{path}: a column cannot be stored in parquet ({' '.join(str(err).split())})") from None
    return table


def _shown(name: str) -> str:
    """A column name for a one-line message (a header cell may hold a newline)."""
    return name if name.isprintable() else repr(name)


def _keep_field_metadata(table: pa.Table, source: pa.Schema) -> pa.Table:
    """Columns carried over keep their field metadata (e.g. the fingerprint of the model
    that made ``clip_score``, which lets a later stage reuse the scores)."""
    fields = [source.field(f.name) if f.name in source.names and source.field(f.name).type == f.type else f
              for f in table.schema]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields))


def _carried_images(table: pa.Table, path: str) -> dict:
    """An input that already holds encoded images (a run's shards, being curated again)
    keeps ``image``/``width``/``height``, so a recipe without a download stage can filter,
    dedup and balance it."""
    if "image" not in table.column_names:
        return {}
    image = table.column("image")
    if not (pa.types.is_binary(image.type) or pa.types.is_large_binary(image.type)):
        raise InputError(f"{path}: column 'image' should hold encoded image bytes, found {image.type}")
    carried = {"image": image.cast(pa.binary())}
    for name in ("width", "height"):
        if name in table.column_names:
            try:
                carried[name] = table.column(name).cast(pa.int32())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise InputError(f"{path}: column '{name}' should hold pixel counts, found "
                                 f"{table.column(name).type}") from None
    return carried


def split_input(spec, config: InputConfig, work_dir: str | Storage) -> dict:
    """Write the input as partitions under ``work_dir/input`` (once) and return its index.

    A finished split is recorded in ``_index.json`` with the input's fingerprint; a rerun
    with the same input reuses it, a different input is an error. ``work_dir`` may be on
    any pyarrow filesystem; partition paths in the index are paths on that filesystem.
    """
    work = work_dir if isinstance(work_dir, Storage) else Storage.at(work_dir)
    files = input_files(spec)
    fingerprint = input_fingerprint(files, config)
    out_dir = work.path("input")
    index_path = work.path("input", "_index.json")
    if work.exists(index_path):
        index = json.loads(work.read_bytes(index_path))
        if index["fingerprint"] != json.loads(json.dumps(fingerprint)):
            raise InputError(
                f"{work.uri()}: holds an unfinished run over a different input; use a new --output or --force"
            )
        return index
    work.makedirs(out_dir)
    uids = UidBook()
    partitions, rows, pending = [], 0, []
    for path in files:
        table = read_input_table(path, config)
        pending.append(_with_sample_columns(table, uids))
        rows += table.num_rows
        buffered = pa.concat_tables(pending, promote_options="permissive")
        while buffered.num_rows >= config.partition_size:
            partitions.append(_write_partition(buffered.slice(0, config.partition_size), work, len(partitions)))
            buffered = buffered.slice(config.partition_size)
        pending = [buffered] if buffered.num_rows else []
    if pending:
        partitions.append(_write_partition(pa.concat_tables(pending, promote_options="permissive"), work,
                                           len(partitions)))
    index = {"fingerprint": fingerprint, "paths": files, "rows": rows, "partitions": partitions}
    work.write_bytes(json.dumps(index).encode(), index_path)
    return json.loads(json.dumps(index))


@dataclass
class UidBook:
    """The uids given so far in one split (across its files and partitions).

    A repeated (url, caption) row gets ``make_uid(url, caption + "#k")`` for the first
    ``k >= 2`` not yet taken (a caption may itself end in ``#2``). ``next_copy`` holds,
    per base uid, the first ``k`` not known to be taken: every earlier candidate is in
    ``taken`` already and ``taken`` only grows, so starting there gives the uid the plain
    search from ``#2`` gives, in time linear in the rows rather than in copies squared
    (crawls repeat a URL and its alt text by the million)."""

    taken: set[str] = field(default_factory=set)
    next_copy: dict[str, int] = field(default_factory=dict)

    def assign(self, urls: list, captions: list) -> tuple[list[str], list[str | None]]:
        """Each row's uid and, for a repeated row, the uid of its first copy."""
        uids = [make_uid(url or "", caption or "") for url, caption in zip(urls, captions)]
        first_copy: list[str | None] = [None] * len(uids)
        taken, next_copy = self.taken, self.next_copy
        for i, base in enumerate(uids):
            if base not in taken:
                taken.add(base)
                continue
            url, caption = urls[i] or "", captions[i] or ""
            copy = next_copy.get(base, 2)
            uid = make_uid(url, f"{caption}#{copy}")
            while uid in taken:
                copy += 1
                uid = make_uid(url, f"{caption}#{copy}")
            next_copy[base] = copy + 1
            taken.add(uid)
            uids[i], first_copy[i] = uid, base
        return uids, first_copy


# What Python's str.strip() removes (the last is U+3000), so a blank URL or caption is judged as before.
_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())


def _blank(values: pa.ChunkedArray) -> pa.Array:
    values = values.combine_chunks()
    return pc.fill_null(pc.equal(pc.utf8_trim(values, _WHITESPACE), ""), True)


def _with_sample_columns(table: pa.Table, book: UidBook) -> pa.Table:
    uids, first_copy = book.assign(table.column("url").to_pylist(), table.column("caption").to_pylist())
    reject = pa.array([None if base is None else "input:duplicate_row=" + base for base in first_copy], pa.string())
    reject = pc.if_else(pc.and_(pc.is_null(reject), _blank(table.column("url"))), "input:empty_url", reject)
    reject = pc.if_else(pc.and_(pc.is_null(reject), _blank(table.column("caption"))), "input:empty_caption", reject)
    base_columns = {
        "uid": pa.array(uids, pa.string()),
        "url": table.column("url"),
        "caption": table.column("caption"),
        "image": _column_or_nulls(table, "image", pa.binary()),
        "width": _column_or_nulls(table, "width", pa.int32()),
        "height": _column_or_nulls(table, "height", pa.int32()),
        REJECT: reject,
    }
    extras = {name: table.column(name) for name in table.column_names if name not in base_columns}
    return _keep_field_metadata(pa.table({**base_columns, **extras}), table.schema)


def _column_or_nulls(table: pa.Table, name: str, dtype: pa.DataType):
    return table.column(name) if name in table.column_names else pa.nulls(table.num_rows, dtype)


def _write_partition(table: pa.Table, work: Storage, number: int) -> dict:
    path = work.path("input", f"part-{number:05d}.parquet")
    work.write_parquet(table, path)
    return {"path": path, "rows": table.num_rows}

