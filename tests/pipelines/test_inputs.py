"""Input formats and the one-line errors for bad recipes and bad inputs."""

from __future__ import annotations

import errno
import json
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines.errors import InputError, RecipeError
from clipcurate.pipelines import readers
from clipcurate.pipelines.readers import UidBook, read_input_table, split_input
from clipcurate.pipelines.recipe import InputConfig, check_columns, load_recipe
from clipcurate.pipelines.stage import Stage, make_uid

ROWS = [("http://a.example/1.jpg", "a red circle"), ("http://a.example/2.jpg", "a blue square")]


def _curate(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "clipcurate.pipelines.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("suffix", ["parquet", "csv", "tsv", "jsonl"])
def test_formats_read_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"in.{suffix}"
    if suffix == "parquet":
        pq.write_table(pa.table({"link": [u for u, _ in ROWS], "alt": [c for _, c in ROWS]}), path)
    elif suffix == "jsonl":
        path.write_text("".join(json.dumps({"link": u, "alt": c}) + "\n" for u, c in ROWS))
    else:
        sep = "\t" if suffix == "tsv" else ","
        path.write_text(f"link{sep}alt\n" + "".join(f"{u}{sep}{c}\n" for u, c in ROWS))
    table = read_input_table(str(path), InputConfig(url_col="link", caption_col="alt"))
    assert table.column("url").to_pylist() == [u for u, _ in ROWS]
    assert table.column("caption").to_pylist() == [c for _, c in ROWS]


def test_split_gives_uids_and_records_duplicate_and_empty_rows(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("url,caption\nhttp://x/1,a cat\nhttp://x/1,a cat\nhttp://x/2,\nhttp://x/3,a dog\n")
    index = split_input(str(path), InputConfig(partition_size=3), str(tmp_path / "work"))
    assert index["rows"] == 4 and [p["rows"] for p in index["partitions"]] == [3, 1]
    table = pa.concat_tables([pq.read_table(p["path"]) for p in index["partitions"]])
    uids = table.column("uid").to_pylist()
    assert len(set(uids)) == 4
    rejects = table.column("reject").to_pylist()
    assert rejects[0] is None and rejects[3] is None
    assert rejects[1] == f"input:duplicate_row={uids[0]}"
    assert rejects[2] == "input:empty_caption"
    again = split_input(str(path), InputConfig(partition_size=3), str(tmp_path / "work"))
    assert again["partitions"] == index["partitions"]


def _plain_search(urls, captions, seen):
    """The split's uids as first written: copy k of a row tries ``#2`` ... ``#k``."""
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
    return uids, rejects


@pytest.mark.parametrize("seed", range(4))
def test_repeated_rows_get_the_uids_of_the_plain_search(seed):
    """Resume of existing runs needs the same uids; captions that end in ``#k`` take the
    uid a suffixed copy would get, in any order, and the split spans files."""
    rng = random.Random(seed)
    urls = ["http://x/1", "http://x/2", "", None, " \u3000"]
    captions = ["a cat", "a cat#2", "a cat#3", "a cat#2#2", "a cat#5", "", None, "\x1c", "a cat#2#3"]
    rows = [(rng.choice(urls), rng.choice(captions)) for _ in range(3000)]
    rows[:0] = [("http://x/1", "a cat#3"), ("http://x/1", "a cat"), ("http://x/1", "a cat"),
                ("http://x/1", "a cat"), ("http://x/1", "a cat#2"), ("http://x/1", "a cat#2")]
    book, seen, cut = UidBook(), set(), 1000
    for chunk in (rows[:cut], rows[cut:]):  # two input files: one uid space
        table = pa.table({"url": pa.array([u for u, _ in chunk], pa.string()),
                          "caption": pa.array([c for _, c in chunk], pa.string())})
        got = readers._with_sample_columns(table, book)
        want_uids, want_rejects = _plain_search(*zip(*chunk), seen)
        assert got.column("uid").to_pylist() == want_uids
        assert got.column("reject").to_pylist() == want_rejects
    assert len(book.taken) == len(rows) == len(seen)


def test_many_copies_of_a_row_cost_linear_time(tmp_path, monkeypatch):
    """A crawl repeats a URL and its alt text by the million: each copy hashes once or
    twice, not once per earlier copy (5,000 copies were 12.5M hashes)."""
    calls = []
    monkeypatch.setattr(readers, "make_uid", lambda url, caption: calls.append(1) or make_uid(url, caption))
    rows = 5000
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"url": ["http://x/1"] * rows, "caption": ["a cat"] * rows}), path)
    index = split_input(str(path), InputConfig(partition_size=1000), str(tmp_path / "work"))
    table = pa.concat_tables([pq.read_table(p["path"]) for p in index["partitions"]])
    uids = table.column("uid").to_pylist()
    assert uids[0] == make_uid("http://x/1", "a cat") and uids[-1] == make_uid("http://x/1", f"a cat#{rows}")
    assert len(set(uids)) == rows
    assert table.column("reject").to_pylist()[1:] == [f"input:duplicate_row={uids[0]}"] * (rows - 1)
    assert len(calls) <= 2 * rows


def test_txt_input_is_refused_at_load(tmp_path):
    """One URL per line has no captions, and the reader rejects a row without one: no
    row could be kept, so say so before anything is fetched."""
    path = tmp_path / "urls.txt"
    path.write_text("http://x/1\n\nhttp://x/2\n")
    with pytest.raises(InputError, match="txt input holds URLs only.*give a csv, tsv, jsonl or parquet"):
        read_input_table(str(path), InputConfig())


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("in.csv", b"url,caption\nhttp://x/1,a cat\nhttp://x/2,caf\xe9 au lait\n", "in.csv: text is not valid UTF-8 at line 3"),
        ("in.tsv", b"url\tcaption\nhttp://x/\xff\ta cat\n", "in.tsv: text is not valid UTF-8 at line 2"),
        ("in.jsonl", b'{"url": "http://x/1", "caption": "a cat"}\n{"url": "http://x/2", "caption": "caf\xe9"}\n',
         "in.jsonl: text is not valid UTF-8 at line 2"),
        ("in.jsonl", b'{"url": "http://x/1", "caption": "a cat", "note": "\xc3"}\n',
         "in.jsonl: text is not valid UTF-8 at line 1"),
        ("in.txt", b"http://x/\xff\n", "txt input holds URLs only"),
    ],
)
def test_invalid_utf8_is_one_line_naming_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_input_table(str(path), InputConfig())


def test_invalid_utf8_in_a_parquet_string_column_is_an_input_error(tmp_path):
    path = tmp_path / "in.parquet"
    captions = pa.array([b"a cat", b"caf\xe9"], pa.binary()).view(pa.string())  # written unchecked
    pq.write_table(pa.table({"url": ["http://x/1", "http://x/2"], "caption": captions}), path)
    with pytest.raises(InputError, match="in.parquet: text is not valid UTF-8"):
        read_input_table(str(path), InputConfig())


def test_a_failed_partition_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A full disk half-way through a parquet file: the error reaches the caller and
    the partial file is removed, not left to fill the disk further on each retry."""
    real = pq.write_table

    def full_disk(table, where, **kwargs):
        real(table, where, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full_disk)
    path = tmp_path / "in.csv"
    path.write_text("url,caption\nhttp://x/1,a cat\n")
    with pytest.raises(OSError) as err:
        split_input(str(path), InputConfig(), str(tmp_path / "work"))
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "work").rglob("*") if p.is_file()) == []


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("in.csv", b"", "input file is empty"),
        ("in.csv", b"link,caption\nhttp://x/1,a cat\n", "no url column 'url'"),
        ("in.csv", b"url,caption\nhttp://x/1,caf\xe9 au lait\n", "not valid UTF-8"),
        ("in.jsonl", b'{"url": "http://x/1", "caption": "caf\xe9"}\n', "in.jsonl: text is not valid UTF-8 at line 1"),
        ("urls.txt", b"http://x/1\n", "urls.txt: a txt input holds URLs only"),
    ],
)
def test_bad_inputs_give_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_input_table(str(path), InputConfig())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages: []\n")
    result = _curate("run", str(recipe), "--input", str(path), "--output", str(tmp_path / "out"), "--inline")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("stages:\n  - downlaod: {}\n", "stages[0].downlaod: unknown stage 'downlaod'"),
        ("stages:\n  - download: {timeout: soon}\n", "stages[0].download.timeout: Input should be a valid number"),
        ("stages:\n  - download: {image_size: 64, colour: red}\n", "stages[0].download.colour: unknown parameter"),
        ("input: {partition_size: 0}\n", "input.partition_size: Input should be greater than 0"),
        ("stages: [\n", "not valid YAML"),
    ],
)
def test_bad_recipes_give_one_line_errors(tmp_path, recipe, message):
    path = tmp_path / "r.yaml"
    path.write_text(recipe)
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(path)
    pool = tmp_path / "in.csv"
    pool.write_text("url,caption\nhttp://x/1,a cat\n")
    result = _curate("run", str(path), "--input", str(pool), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


class _NeedsEmbeddings(Stage):
    name = "needs_embeddings"
    reads = ("clip_image_emb",)


def test_unknown_column_names_the_stage():
    with pytest.raises(RecipeError, match=r"stages\[0\].needs_embeddings: needs column 'clip_image_emb'"):
        check_columns([_NeedsEmbeddings()])



def test_a_jsonl_that_crashes_arrows_block_merge_is_one_line(tmp_path):
    """A ``[]`` then a 1.5 MB string under one key: Arrow's JSON reader, merging the types
    of two blocks, died with a segfault (found by ``bench/fuzz.py``). Run in a child so a
    regression fails this test instead of killing the suite."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"url": "http://x/1", "caption": "a", "note": []}\n'
                    '{"url": "http://x/2", "caption": "b", "note": "' + "h" * 1_500_000 + '"}\n')
    code = ("from clipcurate.pipelines.readers import read_input_table\n"
            "from clipcurate.pipelines.recipe import InputConfig\n"
            "from clipcurate.pipelines.errors import InputError\n"
            f"try:\n    read_input_table({str(path)!r}, InputConfig())\n"
            "except InputError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert "in.jsonl: cannot read as jsonl" in done.stdout and "changed from array to string" in done.stdout
