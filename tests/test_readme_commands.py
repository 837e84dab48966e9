"""The README's shell commands, run as written on a small demo, so the docs cannot drift.

Which commands: every ```bash block of the files in DOCS, in document order, one command
per line (a trailing backslash continues it; ``# ...`` comments are bash's own). A block
right after a ``<!-- untested: REASON -->`` line is left out; other fences (```text,
```yaml, ```python, bare ```) are output or files, not commands.

How they run: each with ``bash -o pipefail -ec`` in one temporary folder (the README's
"folder that holds demo-out/"), ``.venv/bin`` first on PATH, the embedded Ray each
command starts for itself, as a user's would. Sizes: ``make demo`` runs as ``curate demo``
at SMALL_DEMO (a free port: a real demo may hold 8631), ``make test`` is skipped (it is
the suite this test runs in), and ``--steps N`` / ``--self-train-steps N`` become 2.
Nothing else is rewritten.

What is checked: every command exits 0 without a traceback, and CHECKS looks at the key
outputs of some (a ``curate run`` that downloaded the pool, not one that rejected it as
``connect`` or ``private_address``; JSON where JSON is promised; the files a command
names). The ``# demo-out/experiment.yaml`` block must be what the demo wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md"]
SMALL_DEMO = "curate demo --samples 120 --filter-steps 10 --train-steps 2 --port 0"
REWRITES = {"make demo": SMALL_DEMO, "make test": None}  # None: skipped
SMALL_STEPS = (re.compile(r"(--(?:self-train-)?steps) \d+"), r"\1 2")
UNTESTED = re.compile(r"<!--\s*untested:\s*\S.*-->")
COMMAND_TIMEOUT_S = 600


@dataclass
class Command:
    doc: str
    line: int
    text: str  # as written

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    def to_run(self) -> str | None:
        """What the test runs for this command (None: skipped), per the module docstring."""
        bare = re.sub(r"\s+#.*$", "", self.text).strip()
        if bare in REWRITES:
            return REWRITES[bare]
        return SMALL_STEPS[0].sub(SMALL_STEPS[1], self.text)


def fenced_blocks(path: Path) -> list[tuple[str, int, list[str], bool]]:
    """(language, first line number, lines, marked untested) of each fenced block."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            language, start, indent = lines[i].strip()[3:].strip(), i + 1, len(lines[i]) - len(lines[i].lstrip())
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            end = next(j for j in range(start, len(lines)) if lines[j].strip().startswith("```"))
            blocks.append((language, start + 1, [s[indent:] for s in lines[start:end]], bool(UNTESTED.search(previous))))
            i = end
        i += 1
    return blocks


def readme_commands() -> list[Command]:
    commands = []
    for doc in DOCS:
        for language, first, lines, untested in fenced_blocks(REPO / doc):
            if language != "bash" or untested:
                continue
            pending, start = "", first
            for number, line in enumerate(lines, first):
                if not pending:
                    start = number
                pending += line[:-1] + " " if line.endswith("\\") else line
                if line.endswith("\\"):
                    continue
                if pending.strip() and not pending.strip().startswith("#"):
                    commands.append(Command(doc, start, pending.strip()))
                pending = ""
    return commands


# ------------------------------------------------------------------ key outputs


def _manifest_of(command: str, work: Path) -> dict:
    out = Path(re.search(r"--output (\S+)", command).group(1))
    if "--sample" in command:
        out = out / "preview"
    return json.loads((work / out / "manifest.json").read_text())


def check_run(result, work, command):
    """The pool was downloaded: the loopback web answered and the recipe allowed it."""
    manifest = _manifest_of(command, work)
    download = next(s for s in manifest["stages"] if s["name"] == "download")
    refused = {r: n for r, n in download["reasons"].items() if r in ("download:connect", "download:private_address")}
    assert not refused, f"the pool's URLs were not fetched: {refused}"
    assert download["kept"] >= download["in"] * 0.6, download
    assert "total" in result.stdout


def check_demo(result, work, command):
    assert "[6/7] audit" in result.stdout
    assert (work / "demo-out" / "demo.json").is_file()
    assert {p.name for p in (work / "demo-out" / "recipes").glob("*.yaml")} >= {"datacomp-basic.yaml", "demo.yaml",
                                                                                  "recommended.yaml"}
    assert (work / "demo-out" / "run" / "manifest.json").is_file()


def check_serve(result, work, command):
    assert re.search(r"serving the sample web of demo-out on http://127\.0\.0\.1:\d+", result.stdout), result.stdout


def check_stop(result, work, command):
    assert "stopped the sample web of demo-out" in result.stdout, result.stdout
    assert not (work / "demo-out" / "sampleweb.pid").exists()


def check_json_line(*keys):
    def check(result, work, command):
        last = json.loads(result.stdout.strip().splitlines()[-1])
        assert set(keys) <= set(last), (keys, sorted(last))
    return check


def check_stats(result, work, command):
    stats = json.loads(result.stdout)
    assert stats, result.stdout


def check_audit(result, work, command):
    assert (work / "out" / "report" / "index.html").is_file()


def check_search(result, work, command):
    hits = [line for line in result.stdout.splitlines() if re.match(r"\s+\d+\s+-?\d\.\d+\s+[0-9a-f]{32}\s", line)]
    assert len(hits) == 5, result.stdout


def check_ablate(result, work, command):
    report = json.loads((work / "ablation" / "ablation.json").read_text())
    assert report["variants"]["raw"]["kept"] >= report["pool_rows"] * 0.6, report["variants"]["raw"]["funnel"]
    assert report["best"] and (work / "ablation" / "best_recipe.yaml").is_file()


CHECKS = [  # (pattern the command as run matches, check); every one must match a command
    (r"^curate demo ", check_demo),
    (r"^curate sampleweb serve ", check_serve),
    (r"^curate run .* --output out/$", check_run),
    (r"^curate run .* --sample \d+", check_run),
    (r"^curate audit ", check_audit),
    (r"^curate stats .*--json", check_stats),
    (r"^curate train ", check_json_line("output", "step")),
    (r"^curate eval .*--data ", check_json_line("zeroshot_top1")),
    (r"^curate eval .*--pairs ", check_json_line("mismatch_auc")),
    (r"^curate filter-model ", check_json_line("clip_score_model")),
    (r"^curate export .*webdataset", check_json_line("train_data", "tar_count")),
    (r"^curate export .*uids", check_json_line("sha256")),
    (r"^curate index .*&& curate search ", check_search),
    (r"^curate ablate ", check_ablate),
    (r"^curate sampleweb stop ", check_stop),
]


# ------------------------------------------------------------------ tests


def test_every_bash_block_is_picked_and_every_rewrite_and_check_still_applies():
    """Cheap and first: a renamed command must change this test with the README."""
    commands = readme_commands()
    written = {re.sub(r"\s+#.*$", "", c.text).strip() for c in commands}
    assert set(REWRITES) <= written, set(REWRITES) - written
    runs = [c.to_run() for c in commands if c.to_run()]
    for pattern, check in CHECKS:
        assert any(re.search(pattern, re.sub(r"\s+#.*$", "", run)) for run in runs), f"{check.__name__}: {pattern}"


def test_readme_commands_run_as_written(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    timings = []
    try:
        for command in readme_commands():
            run = command.to_run()
            if run is None:
                continue
            started = time.monotonic()
            result = subprocess.run(["bash", "-o", "pipefail", "-ec", run], cwd=tmp_path, env=env, text=True,
                                    capture_output=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
            timings.append((time.monotonic() - started, command.where))
            said = f"{command.where}: `{command.text}` (ran: `{run}`)"
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
            assert result.returncode == 0, f"{said} exited {result.returncode}:\n{tail}"
            assert "Traceback (most recent call last)" not in result.stderr, f"{said} printed a traceback:\n{tail}"
            bare = re.sub(r"\s+#.*$", "", run)
            for pattern, check in CHECKS:
                if re.search(pattern, bare):
                    try:
                        check(result, tmp_path, bare)
                    except AssertionError as err:
                        raise AssertionError(f"{said}: {check.__name__}: {err}\n{tail}") from None
        _check_experiment_block(tmp_path / "demo-out" / "experiment.yaml")
    finally:
        subprocess.run(["curate", "sampleweb", "stop", "--demo", "demo-out"], cwd=tmp_path, env=env,
                       capture_output=True, timeout=60)
        print("slowest:", ", ".join(f"{where} {s:.0f} s" for s, where in sorted(timings, reverse=True)[:5]))


def _check_experiment_block(written: Path) -> None:
    """The README's copy of the demo's experiment, but for ``train.steps`` (the demo's
    ``--train-steps``, small here)."""
    block = next(lines for doc in DOCS for language, _, lines, _ in fenced_blocks(REPO / doc)
                 if language == "yaml" and lines and lines[0].strip() == "# demo-out/experiment.yaml")
    shown, made = yaml.safe_load("\n".join(block)), yaml.safe_load(written.read_text())
    shown["train"].pop("steps"), made["train"].pop("steps")
    assert shown == made
