"""Input formats and the one-line errors for bad recipes and bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines.errors import InputError, RecipeError
from clipcurate.pipelines.readers import read_input_table, split_input
from clipcurate.pipelines.recipe import InputConfig, check_columns, load_recipe
from clipcurate.pipelines.stage import Stage

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


def test_txt_input_is_one_url_per_line(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("http://x/1\n\nhttp://x/2\n")
    table = read_input_table(str(path), InputConfig())
    assert table.column("url").to_pylist() == ["http://x/1", "http://x/2"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "input file is empty"),
        (b"link,caption\nhttp://x/1,a cat\n", "no url column 'url'"),
        (b"url,caption\nhttp://x/1,caf\xe9 au lait\n", "not valid UTF-8"),
    ],
)
def test_bad_inputs_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "in.csv"
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

