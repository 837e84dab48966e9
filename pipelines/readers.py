"""Input readers: URL + caption lists in parquet, csv/tsv, jsonl or txt, split into
fixed-size partitions of the sample schema (img2dataset's reader does the same).

Partitions are written once to ``<work>/input/`` so a rerun reads identical rows in
identical order, and every row gets its ``uid`` here. A repeated (url, caption) row
is kept in the accounting but rejected as ``input:duplicate_row``; an empty caption
is rejected as ``input:empty_caption``.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.errors import InputError
from pipelines.recipe import InputConfig
from pipelines.stage import REJECT, SAMPLE_SCHEMA, make_uid

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}


def input_files(spec: str | list[str]) -> list[str]:
    """Expand a path, directory or glob (or a list of them) into sorted input files."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files: list[str] = []
    for item in specs:
        item = str(item)
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


def read_input_table(path: str, config: InputConfig) -> pa.Table:
    """One input file as an Arrow table with ``url`` and ``caption`` string columns."""
    fmt = config.format if config.format != "auto" else FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: cannot tell the input format from the extension; set input.format")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: input file is empty")
    try:
        if fmt == "parquet":
            table = pq.read_table(path)
        elif fmt in ("csv", "tsv"):
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={config.url_col: pa.string(), config.caption_col: pa.string()}
                ),
            )
        elif fmt == "jsonl":
            table = pajson.read_json(path)
        else:
            table = _read_txt(path, config)
    except pa.ArrowInvalid as err:
        message = " ".join(str(err).split())
        if "UTF8" in message or "utf-8" in message.lower():
            raise InputError(f"{path}: text is not valid UTF-8 ({message})") from None
        raise InputError(f"{path}: cannot read as {fmt} ({message})") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: text is not valid UTF-8 (byte {err.start})") from None
    return _normalise_columns(table, path, config)


def _read_txt(path: str, config: InputConfig) -> pa.Table:
    """img2dataset's txt format: one URL per line, no caption."""
    with open(path, encoding="utf-8") as handle:
        urls = [line.strip() for line in handle if line.strip()]
    return pa.table({config.url_col: pa.array(urls, pa.string()), config.caption_col: pa.nulls(len(urls), pa.string())})


def _normalise_columns(table: pa.Table, path: str, config: InputConfig) -> pa.Table:
    if table.num_rows == 0:
        raise InputError(f"{path}: input has no rows")
    for role, column in (("url", config.url_col), ("caption", config.caption_col)):
        if column not in table.column_names:
            have = ", ".join(table.column_names)
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
    extras = {
        name: table.column(name)
        for name in table.column_names
        if name not in (config.url_col, config.caption_col) and name not in SAMPLE_SCHEMA.names
    }
    return pa.table({**columns, **extras})


def split_input(spec, config: InputConfig, work_dir: str) -> dict:
    """Write the input as partitions under ``work_dir/input`` (once) and return its index.

    A finished split is recorded in ``_index.json`` with the input's fingerprint; a rerun
    with the same input reuses it, a different input is an error.
    """
    files = input_files(spec)
    fingerprint = [[os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]
    fingerprint.append(config.model_dump())
    out_dir = os.path.join(work_dir, "input")
    index_path = os.path.join(out_dir, "_index.json")
    if os.path.exists(index_path):
        with open(index_path) as handle:
            index = json.load(handle)
        if index["fingerprint"] != json.loads(json.dumps(fingerprint)):
            raise InputError(
                f"{work_dir}: holds an unfinished run over a different input; use a new --output or --force"
            )
        return index
    os.makedirs(out_dir, exist_ok=True)
    seen: set[str] = set()
    partitions, rows, pending = [], 0, []
    for path in files:
        table = read_input_table(path, config)
        pending.append(_with_sample_columns(table, seen))
        rows += table.num_rows
        buffered = pa.concat_tables(pending, promote_options="permissive")
        while buffered.num_rows >= config.partition_size:
            partitions.append(_write_partition(buffered.slice(0, config.partition_size), out_dir, len(partitions)))
            buffered = buffered.slice(config.partition_size)
        pending = [buffered] if buffered.num_rows else []
    if pending:
        partitions.append(_write_partition(pa.concat_tables(pending, promote_options="permissive"), out_dir, len(partitions)))
    index = {"fingerprint": fingerprint, "paths": files, "rows": rows, "partitions": partitions}
    tmp = index_path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(index, handle)
    os.replace(tmp, index_path)
    return json.loads(json.dumps(index))


def _with_sample_columns(table: pa.Table, seen: set[str]) -> pa.Table:
    urls = table.column("url").to_pylist()
    captions = table.column("caption").to_pylist()
    uids, rejects = [], []
    for url, caption in zip(urls, captions):
        uid = make_uid(url or "", caption or "")
        reason = None
        copy = 1
        base = uid
        while uid in seen:
            copy += 1
            uid = make_uid(url or "", f"{caption or ''}#{copy}")
            reason = "input:duplicate_row=" + base
        seen.add(uid)
        if reason is None and (url is None or not url.strip()):
            reason = "input:empty_url"
        if reason is None and (caption is None or not caption.strip()):
            reason = "input:empty_caption"
        uids.append(uid)
        rejects.append(reason)
    n = table.num_rows
    base_columns = {
        "uid": pa.array(uids, pa.string()),
        "url": table.column("url"),
        "caption": table.column("caption"),
        "image": pa.nulls(n, pa.binary()),
        "width": pa.nulls(n, pa.int32()),
        "height": pa.nulls(n, pa.int32()),
        REJECT: pa.array(rejects, pa.string()),
    }
    extras = {name: table.column(name) for name in table.column_names if name not in base_columns}
    return pa.table({**base_columns, **extras})


def _write_partition(table: pa.Table, out_dir: str, number: int) -> dict:
    name = f"part-{number:05d}.parquet"
    path = os.path.join(out_dir, name)
    pq.write_table(table, path + ".tmp")
    os.replace(path + ".tmp", path)
    return {"path": path, "rows": table.num_rows}

