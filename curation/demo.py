"""``curate demo``: the whole flow on the local sample web, in a few minutes on a laptop.

1. serve the sample web on 127.0.0.1 (matched pairs plus the troubles of a real crawl);
2. DFN loop: train a tiny CLIP filter model on trusted pairs with the bundled trainer;
3. build MetaCLIP metadata from the pool's captions (``curate metadata build``);
4. run ``pipelines/recipes/demo.yaml``: download, basic/language/CAT filters, CLIP score
   with the filter model, dedup, MetaCLIP balancing -> shards, rejects, manifest;
5. score the run against the truth (mismatched captions vs matched pairs);
6. audit: ``OUT/run/report/index.html``;
7. train a tiny CLIP on the curated shards and evaluate it zero-shot on held-out images.

The web stops when the demo does; ``OUT/demo.json`` says how to serve it again
(``curate sampleweb serve --demo OUT``), and ``OUT/recipes/`` and ``OUT/experiment.yaml``
are the shipped recipes and an ablation set up for it, so the README's commands run on
the demo's data as written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.limits import read_json
from clipcurate.pipelines.manifest import format_funnel
from clipcurate.pipelines.recipe import RECIPES_DIR, load_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.curation.sampleweb import SHAPES, SampleWeb, WebSpec, labeled_set, trusted_pairs

HELP = "Serve the local sample web and run the demo recipe end to end (about 3-5 minutes on 2 cores)."
RECIPE = RECIPES_DIR / "demo.yaml"
# A fixed port keeps the pool's URLs, so its uids and MetaCLIP's per-uid draws, the same on
# every demo run: same input, recipe and seed, same shards.
DEMO_PORT = 8631
SEED = 0
DEMO_FILE = "demo.json"  # marks a demo output and holds what serves its web again
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo-out",
                        help="folder for everything the demo writes (an earlier demo output there is replaced; "
                             "any other non-empty folder is refused)")
    parser.add_argument("--force", action="store_true", help="replace --output even when it is not a demo output")
    parser.add_argument("--samples", type=int, default=600, help="pairs in the sample web's pool")
    parser.add_argument("--recipe", default=str(RECIPE), help="recipe to run over the pool")
    parser.add_argument("--filter-steps", type=int, default=150, help="training steps of the DFN filter model")
    parser.add_argument("--train-steps", type=int, default=150, help="training steps on the curated shards (0: skip)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: embedded Ray)")
    parser.add_argument("--port", type=int, default=DEMO_PORT,
                        help="loopback port of the sample web (0: any free port); recorded in OUTPUT/demo.json, "
                             "where curate sampleweb serve finds it")


def run(args: argparse.Namespace) -> int:
    from clipcurate.train.api import evaluate, train

    started = time.time()
    out = Path(args.output).resolve()
    _clear_output(out, force=args.force)
    data = out / "data"
    (data / "trusted" / "shards").mkdir(parents=True)
    made = {"CLIPCURATE_FILTER_MODEL": f"local-dir:{out / 'filter-model'}",
            "CLIPCURATE_METADATA": str(data / "metadata.json")}
    with _sample_web(args.samples, args.port) as web:
        pool = web.write_pool(str(data / "pool.parquet"))
        pq.write_table(labeled_set(), data / "labeled.parquet")
        pq.write_table(trusted_pairs(), data / "trusted" / "shards" / "part-00000.parquet")
        write_demo_file(out, WebSpec(samples=args.samples, seed=SEED, port=web.port))
        recipes = write_demo_recipes(out / "recipes", made)
        write_experiment(out / "experiment.yaml", steps=args.train_steps or 150)
        print(f"[1/7] sample web on {web.base_url}: {args.samples} pairs -> {pool}; "
              f"{len(recipes)} recipes for it in {out / 'recipes'}")

        _step(2, "DFN filter model: training a tiny CLIP on 600 trusted pairs")
        train(data / "trusted", model="clip-tiny", steps=args.filter_steps, batch_size=64,
              output=out / "filter-model", quiet=True)
        os.environ["CLIPCURATE_FILTER_MODEL"] = made["CLIPCURATE_FILTER_MODEL"]

        _step(3, "MetaCLIP metadata from the pool's captions")
        from clipcurate.pipelines.cli import main as curate

        curate(["metadata", "build", "--captions", pool, "--output", str(data / "metadata.json"),
                "--no-wordnet", "--min-count", "5", "--min-pmi", "100"])
        os.environ["CLIPCURATE_METADATA"] = made["CLIPCURATE_METADATA"]

        _step(4, f"running {args.recipe}")
        recipe, stages = load_recipe(args.recipe)
        manifest = run_pipeline(recipe, stages, pool, str(out / "run"),
                                RunOptions(address=args.address, num_cpus=args.num_cpus, progress=False),
                                recipe_source=args.recipe)
    print(format_funnel(manifest))

    _step(5, "CLIP score against the truth")
    print(_score_report(out / "run"))

    _step(6, "audit")
    from clipcurate.curation.audit.report import write_report

    report = write_report(out / "run")
    print(f"report: {report.index}")

    if args.train_steps:
        _step(7, "training a tiny CLIP on the curated shards, zero-shot on held-out shapes")
        train(out / "run", model="clip-tiny", steps=args.train_steps, batch_size=64, output=out / "model", quiet=True)
        scores = evaluate(out / "model", data / "labeled.parquet")
        print(f"zero-shot top-1 {scores['zeroshot_top1']:.3f} over {len(SHAPES)} classes "
              f"(chance {1 / len(SHAPES):.3f})")
    print(f"shards: {out / 'run' / 'shards'}  manifest: {out / 'run' / 'manifest.json'}  "
          f"({time.time() - started:.0f} s)")
    print(f"the sample web has stopped; to run the README's commands on this pool, serve it again: "
          f"curate sampleweb serve --demo {args.output} --background")
    return 0


def write_demo_file(out: Path, web: WebSpec) -> None:
    """What ``curate sampleweb serve --demo OUT`` needs to serve the same URLs again."""
    info = {"written_by": "curate demo", "sampleweb": {"samples": web.samples, "seed": web.seed, "port": web.port},
            "pool": "data/pool.parquet"}
    (out / DEMO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def read_demo(out: str | Path) -> WebSpec:
    """The sample web of a demo output; a one-line error when ``out`` is not one."""
    path = Path(out) / DEMO_FILE
    if not path.is_file():
        raise UserError(f"{out}: no {DEMO_FILE}, so not a `curate demo` output (make one: curate demo --output {out})")
    info = read_json(path)
    web = info.get("sampleweb") if isinstance(info, dict) else None
    try:
        return WebSpec(samples=int(web["samples"]), seed=int(web["seed"]), port=int(web["port"]))
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{path}: no sampleweb {{samples, seed, port}}: rerun curate demo") from None


def write_demo_recipes(folder: Path, made: dict[str, str]) -> list[Path]:
    """Copies of the shipped recipes that run on the demo's pool as they are: the download
    may fetch from 127.0.0.1 (``allow_private_networks``, which a real crawl keeps off), and
    ``${VARS}`` name the filter model and metadata the demo made. A recipe that needs
    something the demo does not make (heads, target images) is left out."""
    folder.mkdir(parents=True)
    values = {name: made[key] for key, names in _DEMO_VARS.items() for name in names}
    written = []
    for source in sorted(RECIPES_DIR.glob("*.yaml")):
        text = source.read_text(encoding="utf-8")
        if not set(_VAR.findall(text)) <= values.keys():
            continue
        raw = _fill(yaml.safe_load(text), values)
        raw["stages"] = [_allow_loopback(entry) for entry in raw["stages"]]
        header = (f"# {source.name} as shipped (pipelines/recipes/), set up by `curate demo` for its sample web:\n"
                  f"# download.allow_private_networks: true (the web is on 127.0.0.1; keep it false for a real\n"
                  f"# crawl) and ${{VARS}} replaced by this demo's filter model and metadata.\n")
        path = folder / source.name
        path.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        written.append(path)
    return written


def write_experiment(path: Path, *, steps: int) -> None:
    """A small ``curate ablate`` experiment over the demo's pool (docs/ablate.md): the
    recommended recipe against a keep_top variant, trained as the demo's step 7 trains."""
    experiment = {
        "name": "demo",
        "pool": "data/pool.parquet",
        "recipe": "recipes/recommended.yaml",
        "eval": "data/labeled.parquet",
        "truth": {"column": "sample_kind", "clean": "ok"},
        "train": {"model": "clip-tiny", "steps": steps, "batch_size": 64, "seeds": [0]},
        "variants": {"top75": {"set": {"clip_score.keep_top": 0.75, "clip_score.keep_matched": None}}},
    }
    header = f"# written by `curate demo` for its pool: curate ablate {path} --output ablation/ --inline\n"
    path.write_text(header + yaml.safe_dump(experiment, sort_keys=False), encoding="utf-8")


# the demo's own files, under the names the shipped recipes give them
_DEMO_VARS = {"CLIPCURATE_FILTER_MODEL": ("CLIPCURATE_FILTER_MODEL", "CLIP_MODEL"),
              "CLIPCURATE_METADATA": ("CLIPCURATE_METADATA", "METACLIP_METADATA")}


def _fill(value, values: dict[str, str]):
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    if isinstance(value, str):
        return _VAR.sub(lambda m: values[m.group(1)], value)
    return value


def _allow_loopback(entry):
    name, params = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
    if name != "download":
        return entry
    return {"download": {**(params or {}), "allow_private_networks": True}}


def _clear_output(out: Path, *, force: bool) -> None:
    """Empty ``out`` for a new demo, refusing a non-empty folder that is not a demo output
    (``--output ~`` must not delete a home folder); a web still served from it is stopped."""
    if not out.exists():
        return
    if out.is_dir() and (out / DEMO_FILE).is_file():
        from clipcurate.curation.sampleweb_cli import stop_serving

        stopped = stop_serving(out)
        if stopped:
            print(f"stopped the sample web served from {out} (pid {stopped})")
    elif not force and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--output {out}: not empty and not a demo output (no {DEMO_FILE}): choose another "
                        f"folder, or add --force to replace it")
    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink()


def _sample_web(samples: int, port: int) -> SampleWeb:
    try:
        return SampleWeb(n=samples, seed=SEED, port=port)
    except OSError:
        print(f"port {port} is taken: the sample web uses a free one, so this run's URLs, uids and "
              "MetaCLIP draws differ from other demo runs")
        return SampleWeb(n=samples, seed=SEED)


def _step(number: int, text: str) -> None:
    print(f"[{number}/7] {text}", flush=True)


def _score_report(run: Path) -> str:
    """Mean score of matched vs deliberately mismatched pairs, and how well the CLIP
    filter separated them (precision/recall of its rejections for mismatches)."""
    columns = ["sample_kind", "clip_score", "reject"]
    tables = [pq.read_table(p, columns=columns) for p in sorted((run / "shards").glob("*.parquet"))]
    tables += [pq.read_table(p, columns=columns) for p in sorted((run / "rejects").glob("*.parquet"))]
    table = pa.concat_tables(tables).to_pydict()
    kinds = np.array(table["sample_kind"])
    scores = np.array([np.nan if s is None else s for s in table["clip_score"]], dtype=float)
    rejects = np.array([r or "" for r in table["reject"]])
    scored = ~np.isnan(scores)
    matched, mismatched = scored & (kinds == "ok"), scored & (kinds == "mismatch")
    cut = np.char.startswith(rejects, "clip_score:")
    true_pos = (cut & mismatched).sum()
    precision = true_pos / max(cut.sum(), 1)
    recall = true_pos / max(mismatched.sum(), 1)
    return (f"mean clip_score: matched {np.nanmean(scores[matched]):.3f} (n={matched.sum()}), "
            f"mismatched {np.nanmean(scores[mismatched]):.3f} (n={mismatched.sum()}); "
            f"clip filter on mismatches: precision {precision:.2f}, recall {recall:.2f}")
