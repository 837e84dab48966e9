"""Fuzz the input readers, the recipe loader and the download stage outside pytest, with
many more cases than ``make test`` runs (the same targets: ``tests/fuzz/targets.py``).

Each case must end as kept rows, recorded reject reasons or a one-line UserError. A case
that raises anything else, outlives its bound, loses a row or grows the process's peak
memory past the budget is counted and saved (pickled) under ``--failures`` for
``--replay``. The last line is JSON: cases per target, tracebacks, hangs, rows
unaccounted (all three must be 0) and memory blow-ups.

    .venv/bin/python bench/fuzz.py [--cases 10000] [--targets readers,recipes,download]
    .venv/bin/python bench/fuzz.py --cases readers=4500,recipes=4500,download=1000
    .venv/bin/python bench/fuzz.py --replay bench/out/fuzz/recipes-1-0003.pickle
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fuzz"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from hypothesis import given  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402

import targets  # noqa: E402

TARGETS = ("readers", "recipes", "download")
KINDS = ("traceback", "hang", "unaccounted", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="10000",
                        help="cases in total, split evenly over the targets, or per target: "
                             "readers=4500,recipes=4500,download=1000 (a download case waits on timeouts)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ", ".join(TARGETS))
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (the same seed draws the same cases)")
    parser.add_argument("--jobs", type=int, default=6,
                        help="worker processes (a download case mostly waits on its timeouts: run several)")
    parser.add_argument("--failures", default=str(REPO / "bench" / "out" / "fuzz"),
                        help="folder for the failing cases (pickles) and their messages")
    parser.add_argument("--replay", help="run one saved case and print its outcome")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one target, one seed
    args = parser.parse_args(argv)
    chosen = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(chosen) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    try:
        args.cases = _shares(args.cases, chosen)
    except ValueError as err:
        parser.error(str(err))
    if args.replay or args.worker:
        with tempfile.TemporaryDirectory() as scratch:
            with targets.recipe_env(Path(scratch) / "env"):
                if args.replay:
                    return _replay(Path(args.replay), Path(scratch))
                report = _fuzz(chosen[0], args.cases[chosen[0]], args.seed, Path(args.failures), Path(scratch))
        print(json.dumps(report))
        return 0
    started = time.monotonic()
    report = _in_workers(chosen, args)
    summary = {
        "cases": {t: r["cases"] for t, r in report.items()},
        **{kind if kind != "traceback" else "tracebacks": sum(r["failures"][kind] for r in report.values())
           for kind in KINDS},
        "outcomes": {t: r["outcomes"] for t, r in report.items()},
        "seconds": round(time.monotonic() - started, 1),
        "failures_saved": args.failures if any(sum(r["failures"].values()) for r in report.values()) else None,
        "harness_errors": sum(r["harness_errors"] for r in report.values()),
    }
    summary["hangs"] = summary.pop("hang")
    print(json.dumps(summary))
    return 0 if not any(summary[k] for k in ("tracebacks", "hangs", "unaccounted", "memory", "harness_errors")) else 1


def _shares(text: str, chosen: list[str]) -> dict[str, int]:
    """``--cases`` as cases per target: a total split evenly, or ``target=n,...``."""
    if "=" not in text:
        share, extra = divmod(int(text), len(chosen))
        return {t: share + (i < extra) for i, t in enumerate(chosen)}
    given = {name.strip(): int(n) for name, n in (item.split("=", 1) for item in text.split(",") if item)}
    if set(given) - set(chosen):
        raise ValueError(f"--cases names targets not chosen: {', '.join(sorted(set(given) - set(chosen)))}")
    chosen[:] = [t for t in chosen if given.get(t)]
    return {t: given[t] for t in chosen}


def _in_workers(chosen: list[str], args) -> dict:
    """Each target's share of the cases split over ``--jobs`` processes with seeds
    ``seed * 1000 + part``; their reports summed per target."""
    parts = []
    for target in chosen:
        cases = args.cases[target]
        split = max(1, min(args.jobs, cases))
        parts += [(target, cases // split + (j < cases % split), args.seed * 1000 + j) for j in range(split)]

    def run(part):
        target, cases, seed = part
        command = [sys.executable, __file__, "--worker", "--targets", target, "--cases", str(cases),
                   "--seed", str(seed), "--failures", args.failures]
        done = subprocess.run(command, capture_output=True, text=True)
        sys.stderr.write(done.stderr[-2000:])
        if done.returncode != 0:  # the harness itself broke: counted apart, the other parts go on
            print(f"fuzz worker {target} seed {seed} failed: {done.stderr[-500:]}", file=sys.stderr, flush=True)
            return target, {"cases": 0, "failures": {}, "outcomes": {}, "harness_errors": 1}
        return target, json.loads(done.stdout.strip().splitlines()[-1])

    report: dict = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for target, part in pool.map(run, parts):
            total = report.setdefault(target, {"cases": 0, "failures": Counter(), "outcomes": Counter(),
                                               "harness_errors": 0})
            total["cases"] += part["cases"]
            total["harness_errors"] += part.get("harness_errors", 0)
            total["failures"].update(part["failures"])
            total["outcomes"].update(part["outcomes"])
    return {t: {**r, "failures": {k: r["failures"][k] for k in KINDS}, "outcomes": dict(r["outcomes"])}
            for t, r in report.items()}


def _run_case(target: str, case, scratch: Path) -> str:
    if target == "download":
        return targets.check_download(case, targets.DownloadLimits(timeout=1.0, batch_deadline=3.0))
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        if target == "readers":
            return targets.check_reader(case, folder)
        return targets.check_recipe(case, folder)


def _fuzz(target: str, n: int, seed: int, failures: Path, scratch: Path) -> dict:
    strategy = {"readers": targets.reader_cases, "recipes": targets.recipe_cases,
                "download": targets.download_cases}[target]()
    if target == "recipes":
        targets.warm_up_recipes()
    counts: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    state = {"cases": 0, "stopped": False}
    started = time.monotonic()

    @hypothesis_seed(seed)
    @targets.fuzz_settings(n, bench=True)
    @given(strategy)
    def one(case):
        if state["stopped"]:
            return
        state["cases"] += 1
        try:
            outcomes[_run_case(target, case, scratch)] += 1
        except targets.FuzzFailure as failure:
            counts[failure.kind] += 1
            _save(failures, target, f"{target}-{seed}-{sum(counts.values()):04d}", case, str(failure))
            if failure.kind in ("hang", "memory"):  # its thread runs on: later cases would not be independent
                state["stopped"] = True
        if state["cases"] % 250 == 0:
            print(f"{target}: {state['cases']}/{n} cases, {dict(counts)} in {time.monotonic() - started:.0f} s",
                  file=sys.stderr, flush=True)

    one()
    return {"cases": state["cases"], "failures": {k: counts[k] for k in KINDS}, "outcomes": dict(outcomes),
            "seconds": round(time.monotonic() - started, 1)}


def _save(folder: Path, target: str, name: str, case, message: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / name
    stem.with_suffix(".pickle").write_bytes(pickle.dumps((target, case)))
    stem.with_suffix(".txt").write_text(message + "\n\n" + repr(case)[:20_000] + "\n")
    print(f"{target}: failure saved as {stem}.pickle: {message.splitlines()[0][:200]}", file=sys.stderr, flush=True)


def _replay(path: Path, scratch: Path) -> int:
    target, case = pickle.loads(path.read_bytes())
    try:
        print(f"{target}: {_run_case(target, case, scratch)}")
    except targets.FuzzFailure as failure:
        print(f"{target}: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
