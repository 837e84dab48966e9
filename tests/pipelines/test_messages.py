"""Messages a newcomer meets: each says what is wrong and how to fix it.

A refused rerun names the recipe key that differs, a typo gets the closest name, a
recipe's problems come all at once, a closed pipe ends a command quietly, the
top-level help lists the commands in workflow order, and a run that kept nothing (or
warned, with --fail-on-warning) exits non-zero naming its top reject reason."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines.cli import COMMANDS, SUMMARIES, main
from clipcurate.pipelines.errors import RecipeError, UserError
from clipcurate.pipelines.recipe import load_recipe, parse_recipe
from clipcurate.pipelines.run_cli import EXIT_NOTHING_KEPT, EXIT_WARNINGS
from clipcurate.pipelines.runner import RunOptions, run_pipeline

CAPTIONS = ["a red circle", "blue", "a green square on white", "cat", "two small dogs", "sky"] * 10


def _pool(path, urls=None) -> str:
    urls = urls or [f"http://example.test/{i}.jpg" for i in range(len(CAPTIONS))]
    pq.write_table(pa.table({"url": urls, "caption": CAPTIONS[:len(urls)]}), path)
    return str(path)


def _run(raw: dict, pool: str, out) -> dict:
    return run_pipeline(*parse_recipe(raw), pool, str(out), RunOptions(inline=True, progress=False))


def _recipe(partition_size=20, min_words=2) -> dict:
    return {"input": {"partition_size": partition_size}, "stages": [{"basic_filter": {"min_words": min_words}}]}


# ---------------------------------------------------------------- a finished output names what differs

def test_a_finished_output_names_the_recipe_key_or_input_that_differs(tmp_path):
    pool, out = _pool(tmp_path / "pool.parquet"), tmp_path / "out"
    _run(_recipe(), pool, out)
    assert _run(_recipe(), pool, out)["resume"] == {"finished": True}

    with pytest.raises(UserError, match=r"differs in input\.partition_size: 20 -> 30; use --force") as err:
        _run(_recipe(partition_size=30), pool, out)
    assert "another input" not in str(err.value)
    with pytest.raises(UserError, match=r"differs in stages\[0\]\.basic_filter\.min_words: 2 -> 3; use --force"):
        _run(_recipe(min_words=3), pool, out)
    with pytest.raises(UserError, match=r"differs in input files: other files"):
        _run(_recipe(), _pool(tmp_path / "other.parquet"), out)
    _pool(pool, urls=[f"http://example.test/{i}.jpg" for i in range(30)])  # the same path, rewritten
    with pytest.raises(UserError, match=r"differs in input files: changed since"):
        _run(_recipe(), pool, out)


# ---------------------------------------------------------------- recipes: every problem, with suggestions

def _load(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return load_recipe(path)


def test_a_misspelt_stage_or_parameter_gets_the_closest_name(tmp_path):
    with pytest.raises(RecipeError, match=r"stages\[1\]\.clip_scor: unknown stage 'clip_scor' \(did you mean "
                                          r"'clip_score'\?\); known: basic_filter, "):
        _load(tmp_path, "stages:\n  - download: {}\n  - clip_scor: {}\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.download\.timout: unknown parameter \(did you mean "
                                          r"'timeout'\?\)$"):
        _load(tmp_path, "stages:\n  - download: {timout: 3}\n")
    with pytest.raises(RecipeError, match=r"input\.partition_sise: unknown parameter \(did you mean "
                                          r"'partition_size'\?\)$"):
        _load(tmp_path, "input: {partition_sise: 100}\nstages:\n  - download: {}\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.download\.colour: unknown parameter$"):
        _load(tmp_path, "stages:\n  - download: {colour: red}\n")  # nothing close: no guess


def test_every_bad_parameter_of_a_recipe_is_reported_at_once(tmp_path):
    with pytest.raises(RecipeError) as err:
        _load(tmp_path, """\
            input: {partition_size: 0}
            stages:
              - download: {image_size: -1, timout: 3}
              - basic_filter: {min_words: many}
              - basic_filter: {}
              - no_such_stage: {}
        """)
    lines = str(err.value).splitlines()
    where = str(tmp_path / "r.yaml")
    assert [line.split(": ", 2)[1] for line in lines] == [
        "input.partition_size", "stages[0].download.image_size", "stages[0].download.timout",
        "stages[1].basic_filter.min_words", "stages[3].no_such_stage"]
    assert all(line.startswith(f"{where}: ") for line in lines)


def test_a_recipe_with_one_problem_still_reports_one_line(tmp_path):
    with pytest.raises(RecipeError) as err:
        _load(tmp_path, "stages:\n  - download: {timeout: soon}\n")
    assert len(str(err.value).splitlines()) == 1


# ---------------------------------------------------------------- the command line

FLOOD = """
import sys, types
from clipcurate.pipelines import cli
flood = types.ModuleType("flood")
flood.HELP, flood.configure = "prints many lines", lambda parser: None
flood.run = lambda args: [print(f"line {i}") for i in range(200_000)] and 0
sys.modules["flood"] = flood
cli.COMMANDS["flood"] = "flood"
sys.exit(cli.main(["flood"]))
"""


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly():
    """``curate stats --json | head -1``: the command stops at the closed pipe, no traceback."""
    proc = subprocess.Popen([sys.executable, "-c", FLOOD], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_the_top_level_help_lists_the_commands_in_workflow_order(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines if line.startswith("  ") and line.split()[0] in COMMANDS]
    assert listed == [name for name in SUMMARIES if name in COMMANDS] and set(listed) == set(COMMANDS)
    assert listed.index("demo") < listed.index("run") < listed.index("audit") < listed.index("train")
    for name in COMMANDS:
        summary = SUMMARIES[name]
        assert any(line.split() == [name, *summary.split()] for line in lines), name  # one line each


# ---------------------------------------------------------------- exit status of curate run

def _curate_run(tmp_path, stages: str, pool: str, *flags) -> int:
    tmp_path.mkdir(exist_ok=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("input: {partition_size: 30}\nstages:\n" + stages)
    return main(["run", str(recipe), "--input", pool, "--output", str(tmp_path / "out"), "--inline",
                 "--no-progress", *flags])


def test_a_run_that_rejects_every_row_exits_3_naming_the_top_reason(tmp_path, capsys):
    code = _curate_run(tmp_path, "  - basic_filter: {min_words: 9}\n", _pool(tmp_path / "pool.parquet"))
    assert code == EXIT_NOTHING_KEPT == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["curate run: every one of the 60 input rows was rejected; top reason basic_filter:too_few_words "
                   "(60 rows)"]


def test_fail_on_warning_exits_non_zero_only_when_the_funnel_warns(tmp_path, capsys):
    pool = _pool(tmp_path / "pool.parquet")
    half = "  - basic_filter: {min_words: 3}\n"  # 30 of 60 captions have fewer than 3 words: over 30%
    assert _curate_run(tmp_path / "a", half, pool) == 0
    assert _curate_run(tmp_path / "b", half, pool, "--fail-on-warning") == EXIT_WARNINGS
    assert "--fail-on-warning: 1 stage(s) flagged" in capsys.readouterr().err
    assert _curate_run(tmp_path / "c", "  - basic_filter: {min_words: 1, min_chars: 1}\n", pool,
                       "--fail-on-warning") == 0


def test_private_addresses_are_refused_with_the_recipe_keys_that_allow_them(tmp_path, capsys):
    """The reason stays ``download:private_address`` (the audit and retry read it); the
    warning and the exit message name the two download keys that allow a host."""
    pool = _pool(tmp_path / "pool.parquet", urls=[f"http://127.0.0.1:9/{i}.jpg" for i in range(6)])
    code = _curate_run(tmp_path, "  - download: {timeout: 2, retries: 0}\n", pool)
    captured = capsys.readouterr()
    assert code == EXIT_NOTHING_KEPT
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stages"][1]["reasons"] == {"download:private_address": 6}
    rejects = pq.read_table(tmp_path / "out" / "rejects").column("reject").to_pylist()
    assert rejects == ["download:private_address"] * 6
    for text in (manifest["warnings"][0], captured.err):
        assert "download.allow_private_networks: true" in text and "download.private_allowlist" in text
    assert f"! {manifest['warnings'][0]}" in captured.out
