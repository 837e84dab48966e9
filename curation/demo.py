"""``curate demo``: the whole flow on the local sample web, in a few minutes on a laptop.

1. serve the sample web on 127.0.0.1 (matched pairs plus the troubles of a real crawl);
2. DFN loop: train a tiny CLIP filter model on trusted pairs with the bundled trainer;
3. build MetaCLIP metadata from the pool's captions (``curate metadata build``);
4. run ``pipelines/recipes/demo.yaml``: download, basic/language/CAT filters, CLIP score
   with the filter model, dedup, MetaCLIP balancing -> shards, rejects, manifest;
5. score the run against the truth (mismatched captions vs matched pairs);
6. audit: ``OUT/run/report/index.html``;
7. train a tiny CLIP on the curated shards and evaluate it zero-shot on held-out images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.pipelines.manifest import format_funnel
from clipcurate.pipelines.recipe import RECIPES_DIR, load_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.curation.sampleweb import SHAPES, SampleWeb, labeled_set, trusted_pairs

HELP = "Serve the local sample web and run the demo recipe end to end (about 3-5 minutes on 2 cores)."
RECIPE = RECIPES_DIR / "demo.yaml"
# A fixed port keeps the pool's URLs, so its uids and MetaCLIP's per-uid draws, the same on
# every demo run: same input, recipe and seed, same shards.
DEMO_PORT = 8631


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo-out", help="folder for everything the demo writes (replaced)")
    parser.add_argument("--samples", type=int, default=600, help="pairs in the sample web's pool")
    parser.add_argument("--recipe", default=str(RECIPE), help="recipe to run over the pool")
    parser.add_argument("--filter-steps", type=int, default=150, help="training steps of the DFN filter model")
    parser.add_argument("--train-steps", type=int, default=150, help="training steps on the curated shards (0: skip)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: embedded Ray)")
    parser.add_argument("--port", type=int, default=DEMO_PORT,
                        help="loopback port of the sample web (0: any free port)")


def run(args: argparse.Namespace) -> int:
    from clipcurate.train.api import evaluate, train

    started = time.time()
    out = Path(args.output).resolve()
    if out.exists():
        shutil.rmtree(out)
    data = out / "data"
    (data / "trusted" / "shards").mkdir(parents=True)
    with _sample_web(args.samples, args.port) as web:
        pool = web.write_pool(str(data / "pool.parquet"))
        pq.write_table(labeled_set(), data / "labeled.parquet")
        pq.write_table(trusted_pairs(), data / "trusted" / "shards" / "part-00000.parquet")
        print(f"[1/7] sample web on {web.base_url}: {args.samples} pairs -> {pool}")

        _step(2, "DFN filter model: training a tiny CLIP on 600 trusted pairs")
        train(data / "trusted", model="clip-tiny", steps=args.filter_steps, batch_size=64,
              output=out / "filter-model", quiet=True)
        os.environ["CLIPCURATE_FILTER_MODEL"] = f"local-dir:{out / 'filter-model'}"

        _step(3, "MetaCLIP metadata from the pool's captions")
        from clipcurate.pipelines.cli import main as curate

        curate(["metadata", "build", "--captions", pool, "--output", str(data / "metadata.json"),
                "--no-wordnet", "--min-count", "5", "--min-pmi", "100"])
        os.environ["CLIPCURATE_METADATA"] = str(data / "metadata.json")

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
    return 0


def _sample_web(samples: int, port: int) -> SampleWeb:
    try:
        return SampleWeb(n=samples, seed=0, port=port)
    except OSError:
        print(f"port {port} is taken: the sample web uses a free one, so this run's URLs, uids and "
              "MetaCLIP draws differ from other demo runs")
        return SampleWeb(n=samples, seed=0)


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
