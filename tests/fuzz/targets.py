"""The fuzz targets the test suite and ``bench/fuzz.py`` share: for each, a hypothesis
strategy of cases and a ``check_*`` that runs one case and raises ``FuzzFailure`` unless
every outcome is a kept row, a recorded reject reason or a one-line ``UserError``.

A case runs in a worker thread under a wall-clock bound (``bounded``): hypothesis's own
``deadline`` only measures examples that finish, so it cannot catch a hang.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import resource
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from fuzz_web import DownloadCase, FuzzWeb, download_cases, mutate, mutations  # noqa: F401 - re-exported
from clipcurate.pipelines.errors import UserError

UID = re.compile(r"[0-9a-f]{32}")
RECIPES_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "recipes"
MEMORY_BUDGET_MB = 1024  # growth of the process's peak RSS one case may cause


def fuzz_settings(max_examples: int, *, bench: bool = False) -> settings:
    """``make test``: a few examples per target, random each run, the failing blob printed
    (no example database: nothing written into the working tree). The bench: generation
    only (it records failures instead of shrinking them). No hypothesis ``deadline``: the
    harness bounds each case itself."""
    return settings(max_examples=max_examples, deadline=None, database=None, print_blob=not bench,
                    phases=[Phase.generate] if bench else [Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=list(HealthCheck))


class FuzzFailure(AssertionError):
    """A case that broke the contract; ``kind`` is traceback, hang, unaccounted or memory."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def bounded(seconds: float, fn, *args):
    """``fn(*args)`` in a daemon thread: its value, or its exception re-raised here with
    the traceback as text; ``FuzzFailure("hang")`` when it is still running at ``seconds``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - every exception is an outcome to judge
            box["error"], box["trace"] = err, traceback.format_exc()

    before = _peak_rss_mb()
    thread = threading.Thread(target=run, daemon=True, name="fuzz-case")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise FuzzFailure("hang", f"still running after {seconds:g} s")
    grown = _peak_rss_mb() - before
    if grown > MEMORY_BUDGET_MB:
        raise FuzzFailure("memory", f"peak RSS grew by {grown:.0f} MB")
    if "error" in box:
        box["error"].fuzz_trace = box["trace"]
        raise box["error"]
    return box["value"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _judge(seconds: float, fn, *args):
    """The value, ``None`` for a one-line UserError, or a FuzzFailure for anything else."""
    try:
        return bounded(seconds, fn, *args)
    except FuzzFailure:
        raise
    except UserError as err:
        if not _one_line_per_problem(str(err)):
            raise FuzzFailure("traceback", f"UserError of several lines: {str(err)[:300]!r}") from None
        return None
    except BaseException as err:  # noqa: BLE001
        raise FuzzFailure("traceback", getattr(err, "fuzz_trace", repr(err))) from None


def _one_line_per_problem(message: str) -> bool:
    """One line, or one line per problem (a recipe's errors) that each name the same
    file first: a newline a YAML key smuggled in would start a line without it."""
    lines = message.split("\n")
    where = lines[0].split(": ", 1)[0] + ": "
    return "\r" not in message and (len(lines) == 1 or all(line.startswith(where) for line in lines))


# ================================================================ 1. input readers


@dataclass
class ReaderCase:
    """Input files (name, bytes) in one folder, the ``input:`` options, and what a reader
    must give back when the files parse: ``rows`` in total (None: not knowable) and, for
    unmutated files, each row's (url, caption)."""

    files: list[tuple[str, bytes]]
    config: dict
    rows: int | None = None
    values: list[tuple] | None = None
    spec: str = "folder"  # folder, glob or file (the first file)


URLS = ["http://a.example/1.jpg", "https://b.example/x?y=1&z=%20", "http://c.example/caf\u00e9.png", "", " ",
        "ftp://x/1", "javascript:1", "http://d.example/" + "p" * 300]
COLUMN_NAMES = ["url", "caption", "link", "alt", "URL", "uid", "reject", "image", "width", "height", "", " ",
                "a\nb", "caption\u0000", "\u00e9t\u00e9", "key", "TEXT"]
HUGE = "h" * 1_500_000  # past pyarrow's 1 MiB read blocks


def _texts():
    return st.one_of(st.sampled_from(URLS), st.text(max_size=12))


@st.composite
def _column(draw, n: int, kind: str, strings: list):
    """Values for n rows of one column of ``kind`` (str-like kinds take ``strings``)."""
    if kind in ("string", "large_string", "binary", "dictionary"):
        return strings
    if kind == "null":
        return [None] * n
    if kind == "int":
        return draw(st.lists(st.one_of(st.none(), st.integers(-(2 ** 63), 2 ** 63 - 1)), min_size=n, max_size=n))
    if kind == "float":
        return draw(st.lists(st.floats(allow_nan=True), min_size=n, max_size=n))
    if kind == "bool":
        return draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if kind == "list":
        return draw(st.lists(st.lists(st.text(max_size=3), max_size=2), min_size=n, max_size=n))
    if kind == "struct":
        return draw(st.lists(st.fixed_dictionaries({"a": st.integers(0, 9)}), min_size=n, max_size=n))
    if kind == "empty_struct":
        return [{} for _ in range(n)]
    if kind == "invalid_utf8":
        return [b"caf\xe9"] * n
    # mixed: a different JSON type on each row
    return draw(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=4), st.booleans(),
                                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                                        st.integers(), max_size=2)),
                         min_size=n, max_size=n))


STRING_KINDS = ("string", "large_string", "binary", "dictionary")
KINDS = STRING_KINDS + ("null", "int", "float", "bool", "list", "struct", "empty_struct", "invalid_utf8", "mixed")


@st.composite
def _one_file(draw, fmt: str, url_col: str, caption_col: str):
    """(bytes, rows, values, extension) of one valid-ish file; values None when not comparable."""
    n = draw(st.integers(0, 6))
    urls = draw(st.lists(st.one_of(st.none(), _texts()), min_size=n, max_size=n))
    captions = draw(st.lists(st.one_of(st.none(), _texts()), min_size=n, max_size=n))
    if draw(st.booleans()) and n:  # repeated rows: uid suffixes
        urls, captions = urls[:1] * n, captions[:1] * n
    if n and draw(st.integers(0, 19)) == 0:
        captions[0] = HUGE
    plain = draw(st.integers(0, 3)) > 0  # most files have text url/caption columns
    url_kind = "string" if plain else draw(st.sampled_from(KINDS))
    caption_kind = "string" if plain else draw(st.sampled_from(KINDS))
    names = [url_col, caption_col]
    if draw(st.integers(0, 4)) == 0:  # a wrong or missing column name
        names[draw(st.integers(0, 1))] = draw(st.sampled_from(COLUMN_NAMES))
    columns = {names[0]: (url_kind, draw(_column(n, url_kind, urls)))}
    columns.setdefault(names[1], (caption_kind, draw(_column(n, caption_kind, captions))))
    for _ in range(draw(st.integers(0, 2))):  # extra columns, some with the sample schema's names
        kind = draw(st.sampled_from(KINDS))
        columns.setdefault(draw(st.sampled_from(COLUMN_NAMES)), (kind, draw(_column(n, kind, captions))))
    if "image" in columns and draw(st.booleans()):  # carried images with odd width/height
        columns["image"] = ("binary", [b"\xff\xd8\xff" for _ in range(n)])
        columns["width"] = draw(st.sampled_from([("string", ["12"] * n), ("string", ["x"] * n),
                                                 ("float", [1.5] * n), ("int", [2 ** 40] * n), ("int", [7] * n)]))
    comparable = url_kind == caption_kind == "string" and names == [url_col, caption_col]
    values = list(zip(urls, captions)) if comparable else None
    if fmt == "parquet":
        return _parquet(columns), n, values, ".parquet"
    if fmt == "jsonl":
        return _jsonl(columns, n, draw(st.booleans())), n, values, draw(st.sampled_from([".jsonl", ".json"]))
    delimiter = "," if fmt == "csv" else "\t"
    header = list(columns)
    if draw(st.integers(0, 9)) == 0:  # a column named twice
        header.append(header[0])
        columns = {**columns, "\x00twice": columns[header[0]]}
    data = _delimited(header, list(columns.values()), n, delimiter)
    if values is not None:  # a delimited file has no nulls: they are empty strings
        values = [(u or "", c or "") for u, c in values]
    return data, n, values, "." + fmt


def _arrow_column(kind: str, values: list) -> pa.Array:
    if kind in ("string", "invalid_utf8_binary"):
        return pa.array(values, pa.string())
    if kind == "large_string":
        return pa.array(values, pa.large_string())
    if kind == "binary":
        return pa.array([v.encode() if isinstance(v, str) else v for v in values], pa.binary())
    if kind == "dictionary":
        return pa.array(values, pa.string()).dictionary_encode()
    if kind == "invalid_utf8":
        return pa.array(values, pa.binary())
    if kind == "empty_struct":
        return pa.array([{"_": None}] * len(values), pa.struct([("_", pa.null())]))
    if kind == "mixed":
        return pa.array([json.dumps(v) for v in values], pa.string())
    return pa.array(values)


def _parquet(columns: dict) -> bytes:
    table = pa.table({name: _arrow_column(kind, values) for name, (kind, values) in columns.items()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _jsonl(columns: dict, n: int, ascii_only: bool) -> bytes:
    lines = []
    for i in range(n):
        row = {}
        for name, (kind, values) in columns.items():
            value = values[i]
            if isinstance(value, bytes):
                row[name] = value.decode("latin-1")
            elif isinstance(value, float) and value != value:
                row[name] = None
            else:
                row[name] = value
        lines.append(json.dumps(row, ensure_ascii=ascii_only))
    text = "\n".join(lines) + ("\n" if lines else "")
    data = text.encode("utf-8")
    if any(kind == "invalid_utf8" for kind, _ in columns.values()):
        data = data.replace("caf\u00e9".encode(), b"caf\xe9")
    return data


def _delimited(header: list, columns: list, n: int, delimiter: str) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(header)
    for i in range(n):
        writer.writerow(["" if values[i] is None else values[i].decode("latin-1") if isinstance(values[i], bytes)
                         else values[i] for _, values in columns])
    data = out.getvalue().encode("utf-8")
    if any(kind == "invalid_utf8" for kind, _ in columns):
        data = data.replace("caf\u00e9".encode(), b"caf\xe9")
    return data


@st.composite
def reader_cases(draw) -> ReaderCase:
    url_col, caption_col = draw(st.sampled_from([("url", "caption"), ("link", "alt"), ("URL", "TEXT")]))
    config = {"url_col": url_col, "caption_col": caption_col, "partition_size": draw(st.integers(1, 4))}
    files, rows, values = [], 0, []
    for i in range(draw(st.integers(1, 3))):
        fmt = draw(st.sampled_from(["parquet", "csv", "tsv", "jsonl"]))
        data, n, file_values, ext = draw(_one_file(fmt, url_col, caption_col))
        ops = draw(mutations()) if draw(st.booleans()) else ()
        extra = draw(st.sampled_from(["", "", "", "", "bom", "empty", "huge_line", "nul_line", "wrong_ext"]))
        if ops or extra:
            data, file_values = _mutated(data, ops, extra, fmt), None
            if extra == "wrong_ext":
                ext = draw(st.sampled_from([".parquet", ".csv", ".tsv", ".jsonl", ".txt", ".PARQUET"]))
        files.append((f"part{i}{ext}", data))
        if file_values is not None:
            known = n
        elif fmt == "jsonl" and ext in (".jsonl", ".json"):
            known = _jsonl_rows(data)
        else:
            known = None
        rows = None if rows is None or known is None else rows + known
        values = None if values is None or file_values is None else values + file_values
    if draw(st.integers(0, 9)) == 0:
        config["format"] = draw(st.sampled_from(["auto", "parquet", "csv", "tsv", "jsonl", "txt"]))
        if config["format"] != "auto":
            rows = values = None
    spec = draw(st.sampled_from(["folder", "glob", "file"])) if len(files) > 1 else "file"
    return ReaderCase(files, config, rows, values, spec)


def _mutated(data: bytes, ops: tuple, extra: str, fmt: str) -> bytes:
    data = mutate(data, ops)
    if extra == "bom":
        return b"\xef\xbb\xbf" + data
    if extra == "empty":
        return b""
    if extra == "huge_line":
        line = (json.dumps({"url": HUGE, "caption": "x"}) if fmt == "jsonl" else f"{HUGE},x").encode()
        return data + line + b"\n"
    if extra == "nul_line":
        return data + b"\x00" * 64 + b"\n"
    return data


def _jsonl_rows(data: bytes) -> int | None:
    """Rows of a jsonl file by Python's json, line by line; None when any line is not an object."""
    rows = 0
    for line in data.split(b"\n"):
        if not line.strip(b" \t\r"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        rows += 1
    return rows


def check_reader(case: ReaderCase, folder: str | Path, seconds: float = 20.0) -> str:
    """Split the case's files; a UserError, or partitions that account for every row."""
    from clipcurate.pipelines.readers import split_input
    from clipcurate.pipelines.recipe import InputConfig

    folder = Path(folder)
    inputs = folder / "in"
    inputs.mkdir(parents=True)
    for name, data in case.files:
        (inputs / name).write_bytes(data)
    spec = {"folder": str(inputs), "glob": str(inputs / "part*"), "file": str(inputs / case.files[0][0])}[case.spec]
    rows = case.rows if case.spec != "file" or len(case.files) == 1 else None
    values = case.values if case.spec != "file" or len(case.files) == 1 else None

    def split():
        index = split_input(spec, InputConfig(**case.config), str(folder / "work"))
        return index, [pq.read_table(p["path"]) for p in index["partitions"]]

    outcome = _judge(seconds, split)
    if outcome is None:
        return "user_error"
    index, parts = outcome
    table = pa.concat_tables(parts, promote_options="permissive") if parts else None
    got = 0 if table is None else table.num_rows
    if got != index["rows"] or any(len(p) > case.config["partition_size"] for p in parts):
        raise FuzzFailure("unaccounted", f"index says {index['rows']} rows, partitions hold {got}")
    if rows is not None and got != rows:
        raise FuzzFailure("unaccounted", f"{rows} rows in, {got} out")
    if table is None:
        return "empty"
    uids = table.column("uid").to_pylist()
    if not all(isinstance(u, str) and UID.fullmatch(u) for u in uids) or len(set(uids)) != len(uids):
        raise FuzzFailure("unaccounted", f"uids not unique 32-hex: {uids[:5]}")
    rejects = table.column("reject").to_pylist()
    if not all(r is None or r.startswith("input:") for r in rejects):
        raise FuzzFailure("unaccounted", f"reject reasons: {sorted(set(map(str, rejects)))[:5]}")
    if values is not None:
        out = list(zip(table.column("url").to_pylist(), table.column("caption").to_pylist()))
        if out != values:
            diff = next(i for i, (a, b) in enumerate(zip(out, values)) if a != b) if len(out) == len(values) else -1
            raise FuzzFailure("unaccounted", f"row values changed (first at {diff})")
    return "table"


# ================================================================ 2. recipe loader

SHIPPED = sorted(RECIPES_DIR.glob("*.yaml"))
TOP_KEYS = ["name", "seed", "input", "output", "stages", "against", "blocklist", "warn_reject_share"]
STAGE_NAMES = ["download", "basic_filter", "language_filter", "clip_score", "dedup_exact", "dedup_perceptual",
               "dedup_minhash", "metaclip", "blocklist", "cat_filter", "clip_heads", "no_such_stage"]
ODD_STRINGS = ["", "${UNSET_FUZZ_VARIABLE}", "${HOME}", "$", "${", "-1", "1e999", ".nan", "/nonexistent/file",
               "null", "~", "yes", "\x00", "a\nb", "\u202e", "download", "{}", "[]", "*alias", "&anchor"]


def _scalars():
    return st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([2 ** 64, -(2 ** 63), 10 ** 40, 0, -1]),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                     st.sampled_from(ODD_STRINGS + STAGE_NAMES + TOP_KEYS))


def yaml_values(max_leaves: int = 12):
    keys = st.one_of(st.sampled_from(TOP_KEYS + STAGE_NAMES), st.text(max_size=6), st.integers(), st.none(),
                     st.booleans())

    # a named function, not a lambda: hypothesis describes a lambda by scanning sys.modules,
    # which races with a case's thread that is still importing (RuntimeError in the harness)
    def nested(inner):
        return st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4))

    return st.recursive(_scalars(), nested, max_leaves=max_leaves)


@dataclass
class RecipeCase:
    """A recipe file's bytes and the ``curate run`` flags that add to it."""

    text: bytes
    against: tuple = ()
    blocklist: tuple = ()
    kind: str = ""


def alias_bomb(levels: int, fanout: int, where: str = "stages") -> bytes:
    """The billion-laughs document: each level repeats the previous one ``fanout`` times,
    ``fanout ** levels`` leaves from a few hundred bytes."""
    lines = [f'a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(fanout))}]")
    lines.append(f"{where}: *a{levels}")
    return ("\n".join(lines) + "\n").encode()


HANDMADE = [
    b"stages: &s [*s]\n",
    b"input: &i {partition_size: 5, url_col: *i}\n",
    b"a: &x {name: n}\n<<: *x\nstages: []\n",
    b"stages:\n  - download: &d {image_size: 64}\n  - basic_filter: *d\n",
    b"stages: !!python/object/apply:os.system [echo]\n",
    b"name: !!binary aGVsbG8=\n",
    b"seed: !!timestamp 2001-12-14\n",
    b"stages: !!set {download, basic_filter}\n",
    b"stages: !!omap [{download: {}}]\n",
    b"stages: !custom x\n",
    b"name: a\n---\nname: b\n",
    b"\xef\xbb\xbfname: bom\nstages: [download]\n",
    b"name: caf\xe9\n",  # Latin-1, not UTF-8
    b"name: \x00\n",
    b"\xff\xfe" + "name: utf16\n".encode("utf-16-le"),
    b"",
    b"   \n# only a comment\n",
    b"- just\n- a list\n",
    b"42\n",
    b"seed: 1e400\n",
    b"seed: 123456789012345678901234567890\ninput: {partition_size: 99999999999999999999999}\n",
    b"warn_reject_share: .nan\n",
    b"stages: [download, download]\n",
    b"stages: [{download: {timeout: -1}}]\n",
    b"stages: [{download: {private_allowlist: ['127.0.0.1:0', 'x']}}]\n",
    b"stages: [{clip_heads: {heads: [{name: a, path: /nonexistent.pt}]}}]\n",
    b"stages: [{clip_heads: {heads: [{name: a, path: /etc/passwd}]}}]\n",
    b"stages: [{metaclip: {metadata: /nonexistent.txt}}]\n",
    b"stages: [{dedup_minhash: {num_perm: 8, threshold: 1.0}}]\n",
    b"stages: [{dedup_minhash: {num_perm: 8, threshold: 0.01}}]\n",
    b"stages: [{dedup_minhash: {num_perm: 1024, threshold: 1.0e-300}}]\n",
    b"against: 5\nstages: [download]\n",
    b"blocklist: {a: 1}\nstages: [download]\n",
    b"stages:\n  - ? [a, b]\n    : x\n",
    b"{[1, 2]: x}\n",
    b"stages: [\n",
    b"[" * 5000 + b"]" * 5000 + b"\n",
    b"stages: " + b"[" * 300 + b"]" * 300 + b"\n",
    b"name: " + b"x" * 2_000_000 + b"\n",
]


@st.composite
def recipe_cases(draw) -> RecipeCase:
    kind = draw(st.sampled_from(["random", "shipped", "shipped", "shipped", "handmade", "bomb", "garbage"]))
    flags = draw(st.sampled_from([((), ()), (("/nonexistent/release",), ()), ((), ("/nonexistent/blocklist.txt",))]))
    if kind == "random":
        value = draw(st.one_of(yaml_values(), st.fixed_dictionaries(
            {}, optional={k: yaml_values(6) for k in TOP_KEYS})))
        text = yaml.safe_dump(value, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")
    elif kind == "shipped":
        path = draw(st.sampled_from(SHIPPED))
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        for _ in range(draw(st.integers(1, 3))):
            raw = _mutate_tree(draw, raw)
        text = yaml.safe_dump(raw, allow_unicode=True).encode("utf-8", "surrogatepass")
        text = mutate(text, draw(mutations(2))) if draw(st.integers(0, 4)) == 0 else text
    elif kind == "handmade":
        text = draw(st.sampled_from(HANDMADE))
    elif kind == "bomb":
        text = alias_bomb(draw(st.integers(2, 12)), draw(st.integers(2, 10)),
                          draw(st.sampled_from(["stages", "name", "input", "blocklist", "unknown_key"])))
    else:
        text = mutate(draw(st.sampled_from(SHIPPED)).read_bytes(), draw(mutations(6)))
    return RecipeCase(text, *flags, kind=kind)


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _paths(value, prefix + (i,))


def _mutate_tree(draw, tree):
    """One structural edit at a random place: replace, delete, add a key, wrap, share
    (an anchor and alias in the dump), or a numeric extreme."""
    places = list(_paths(tree))
    where = draw(st.sampled_from(places))
    how = draw(st.sampled_from(["replace", "delete", "add", "wrap", "share", "number", "stage"]))
    if how == "stage":
        entry = draw(st.one_of(st.sampled_from(STAGE_NAMES),
                               st.dictionaries(st.sampled_from(STAGE_NAMES), yaml_values(6), min_size=1, max_size=2)))
        stages = tree.get("stages") if isinstance(tree, dict) else None
        if isinstance(stages, list):
            stages.insert(draw(st.integers(0, len(stages))), entry)
        return tree
    if how == "number":
        new = draw(st.sampled_from([-1, 0, -1e308, 1e308, 2 ** 70, float("inf"), float("nan"), 0.5, True, "7"]))
    elif how == "share":
        new = _get(tree, draw(st.sampled_from(places)))
    elif how == "wrap":
        new = [_get(tree, where)]
    else:
        new = draw(yaml_values(6))
    if not where:
        return new if how in ("replace", "number", "wrap") else tree
    parent, last = _get(tree, where[:-1]), where[-1]
    if how == "delete":
        del parent[last]
    elif how == "add" and isinstance(parent, dict):
        parent[draw(st.one_of(st.sampled_from(TOP_KEYS + STAGE_NAMES + ["timeout", "min_score", "colour"]),
                              st.text(max_size=6)))] = new
    elif how != "share" or not _contains(new, parent):  # sharing an ancestor would make a cycle
        parent[last] = new
    return tree


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _contains(tree, target) -> bool:
    if tree is target:
        return True
    children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else ()
    return any(_contains(child, target) for child in children)


@contextlib.contextmanager
def recipe_env(folder: str | Path):
    """The environment variables the shipped recipes name, pointing at small real files
    (metadata, head files) under ``folder``; restored afterwards."""
    import torch

    from clipcurate.train.heads import PUBLISHED, Head, HeadNet, save_head

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = folder / "entries.txt"
    metadata.write_text("circle\nred\n")
    values = {"CLIPCURATE_FILTER_MODEL": "ViT-B-32", "CLIP_MODEL": "ViT-B-32", "CLIPCURATE_METADATA": str(metadata),
              "METACLIP_METADATA": str(metadata), "TARGET_IMAGES": str(folder / "target.parquet")}
    aesthetic = folder / "aesthetic.pth"
    torch.save(HeadNet(list(PUBLISHED["laion_aesthetic"].layers)).state_dict(), aesthetic)
    values["AESTHETIC_HEAD"] = str(aesthetic)
    for name in ("nsfw", "watermark"):
        meta = {"name": name, "model": {"spec": "ViT-L-14", "pretrained": "openai", "embed_dim": 768},
                "output": {"kind": "probability", "positive": name}}
        values[f"{name.upper()}_HEAD"] = str(save_head(Head(HeadNet(["linear:768:1"]), ["linear:768:1"], meta),
                                                       folder / f"{name}.head.pt"))
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def warm_up_recipes() -> None:
    """Load every shipped recipe once, unbounded: the first load imports torch, open_clip
    and the stages' libraries, which on a loaded machine alone outlasts a case's bound."""
    from clipcurate.pipelines.errors import UserError
    from clipcurate.pipelines.recipe import load_recipe

    for path in SHIPPED:
        try:
            load_recipe(path)
        except UserError:
            pass


def check_recipe(case: RecipeCase, folder: str | Path, seconds: float = 10.0) -> str:
    """Load the recipe as ``curate run`` does: a Recipe with built stages, or a UserError."""
    from clipcurate.pipelines.recipe import Recipe, load_recipe
    from clipcurate.pipelines.stage import Stage

    path = Path(folder) / "recipe.yaml"
    path.write_bytes(case.text)
    outcome = _judge(seconds, lambda: load_recipe(path, against=case.against, blocklist=case.blocklist))
    if outcome is None:
        return "user_error"
    recipe, stages = outcome
    if not isinstance(recipe, Recipe) or not all(isinstance(s, Stage) for s in stages):
        raise FuzzFailure("traceback", f"load_recipe returned {type(recipe).__name__}, {stages!r}")
    return "recipe"


# ================================================================ 3. download stage over a fuzzed web

CATEGORY = re.compile(r"download:([a-z_0-9]+)(=.*)?", re.S)


@dataclass
class DownloadLimits:
    """Seconds a fuzzed request and batch may take; the case's bound adds ``slack``."""

    timeout: float = 0.5
    batch_deadline: float = 2.0
    slack: float = 3.0


def check_download(case: DownloadCase, limits: DownloadLimits = DownloadLimits()) -> str:
    """Run the download stage over the case's URLs against its scripted server: the same
    rows back, each kept with decodable image bytes or rejected with a ``download:*`` reason."""
    from clipcurate.pipelines.download.fetch import CATEGORIES
    from clipcurate.pipelines.download.stage import Download
    from clipcurate.pipelines.stage import REJECT

    n = len(case.urls)
    uids = [f"{i:032x}" for i in range(n)]
    earlier = ["input:empty_caption" if r else None for r in case.rejected]
    with FuzzWeb(case.plans, closed_port=_closed_port()) as web:
        urls = [web.fill(u.encode()).decode() for u in case.urls]
        batch = pa.table({"uid": uids, "url": pa.array(urls, pa.string()), "caption": ["c"] * n,
                          REJECT: pa.array(earlier, pa.string())})
        stage = Download(timeout=limits.timeout, batch_deadline=limits.batch_deadline, backoff=0.01,
                         max_retry_after=0.5, thread_count=4, image_size=32, private_allowlist=[web.endpoint],
                         **case.params)

        _judge(60.0, stage.ensure_setup)  # the first one loads img2dataset's resizer: seconds
        started = time.monotonic()
        try:
            out = _judge(limits.batch_deadline + limits.slack, stage, batch)
        finally:
            stage._pool.shutdown(wait=False, cancel_futures=True)  # a stage has no close; free its threads
            stage._fetcher.close()
        elapsed = time.monotonic() - started
    if out is None:
        raise FuzzFailure("traceback", "the download stage raised a UserError on a batch")
    if out.column("uid").to_pylist() != uids:
        raise FuzzFailure("unaccounted", f"{n} rows in, uids out {out.column('uid').to_pylist()}")
    if elapsed > limits.batch_deadline + 1.0:
        raise FuzzFailure("hang", f"the batch took {elapsed:.1f} s, deadline {limits.batch_deadline} s")
    for row, before in zip(out.to_pylist(), earlier):
        reason = row[REJECT]
        if before is not None:
            if reason != before or row["image"] is not None:
                raise FuzzFailure("unaccounted", f"a rejected row changed: {before!r} -> {reason!r}")
            continue
        if reason is None:
            _check_image(row)
            continue
        match = CATEGORY.fullmatch(reason)
        if match is None or match.group(1) not in CATEGORIES or row["image"] is not None:
            raise FuzzFailure("unaccounted", f"reject {reason!r} is not a download ledger entry")
        detail = (match.group(2) or "=")[1:]
        if match.group(1) == "connect" and detail[:1].isupper():  # fetch's catch-all turned a bug into a reason
            raise FuzzFailure("traceback", f"an exception masked as {reason!r} for {row['url'][:200]!r}")
    return "batch"


def _check_image(row: dict) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(row["image"])) as image:
            image.load()
            size = image.size
    except Exception as err:  # noqa: BLE001
        raise FuzzFailure("unaccounted", f"kept row's image does not decode: {err!r}") from None
    if size != (row["width"], row["height"]):
        raise FuzzFailure("unaccounted", f"kept row says {row['width']}x{row['height']}, image is {size}")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

