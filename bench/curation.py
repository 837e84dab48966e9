"""Does curation train better models? The recommended recipe vs the raw pool vs a
clean-only oracle, on web-like pools with known truth, at equal samples seen.

For each pool (``curation/pools.py``: Fashion-MNIST product photos, crops of
scikit-image photographs; mismatched captions, re-uploads, pictures of text, foreign
captions, broken links, templated alt-texts, head concepts): serve it on 127.0.0.1,
train a DFN filter model on the pool's trusted pairs, then ``curate ablate`` with the
recommended recipe as the base: the raw pool (downloaded, uncurated) and the clean
oracle come with it. Every variant trains the same model for the same steps x batch
over ``--seeds`` and is evaluated zero-shot on a balanced held-out set.

    .venv/bin/python bench/curation.py [--rows 6000] [--pools fashion photos] [--steps 150]

Last line: one JSON object with ``gain_vs_raw`` (points of top-1, recommended minus raw,
mean over seeds and pools), ``seed_spread``, ``clean_kept`` (clean pictures kept through any
copy: dedup keeps one copy of a re-uploaded picture, whichever; ``clean_rows_kept`` is the
strict per-row share), ``noise_removed``, ``mismatch_removed`` (each the worst pool's) and
the per-pool figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from clipcurate.curation.ablate import download_pool, load_experiment, run_ablation  # noqa: E402
from clipcurate.curation.ablate_report import summary_table  # noqa: E402
from clipcurate.curation.pools import make_pool  # noqa: E402
from clipcurate.pipelines import cli  # noqa: E402
from clipcurate.pipelines.errors import RecipeError  # noqa: E402
from clipcurate.pipelines.recipe import expand_env, parse_recipe  # noqa: E402
from clipcurate.pipelines.runner import RunOptions, run_pipeline  # noqa: E402
from clipcurate.curation.sampleweb import SampleWeb  # noqa: E402
from clipcurate.train.api import evaluate  # noqa: E402
from clipcurate.train.filter_model import train_filter_model  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "pipelines" / "recipes" / "recommended.yaml"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/clipcurate-bench-curation")
    parser.add_argument("--rows", type=int, default=6000, help="pool rows per source")
    parser.add_argument("--pools", nargs="+", default=["fashion", "photos"])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--model", default="lit-tiny", help="the model every variant trains")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for training (1: a shared 2-core machine trains faster so)")
    parser.add_argument("--variants", default=None, help="YAML mapping of extra variants (curate ablate format)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir of an earlier run (resume)")
    parser.add_argument("--port", type=int, default=18_710, help="first loopback port of the pools' web servers")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    started = time.time()
    per_pool = {}
    for name in args.pools:
        per_pool[name] = bench_pool(name, args, work / name)
    summary = {
        "bench": "curation", "rows_per_pool": args.rows, "pools": list(per_pool), "model": args.model,
        "steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds,
        "gain_vs_raw": _mean(p["gain_vs_raw"] for p in per_pool.values()),
        "seed_spread": max(p["seed_spread"] for p in per_pool.values()),
        "clean_kept": min(p["clean_kept"] for p in per_pool.values()),
        "clean_rows_kept": min(p["clean_rows_kept"] for p in per_pool.values()),
        "noise_removed": min(p["noise_removed"] for p in per_pool.values()),
        "mismatch_removed": min(p["mismatch_removed"] for p in per_pool.values()),
        "beats_raw_by_more_than_spread": all(p["gain_vs_raw"] > 100 * p["seed_spread"] for p in per_pool.values()),
        "no_silent_loss": all(p["no_silent_loss"] for p in per_pool.values()),
        "meets_90_90": all(p["meets_90_90"] for p in per_pool.values()),
        "per_pool": per_pool, "wall_s": round(time.time() - started, 1),
    }
    print(json.dumps(summary))
    return 0


def bench_pool(name: str, args, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pool = make_pool(name, args.rows, seed=0)
    pq.write_table(pool.eval_set, work / "eval.parquet")
    (work / "trusted" / "shards").mkdir(parents=True, exist_ok=True)
    half = pool.trusted.num_rows * 4 // 5
    pq.write_table(pool.trusted.slice(0, half), work / "trusted" / "shards" / "part-00000.parquet")
    pq.write_table(pool.trusted.slice(half), work / "trusted_heldout.parquet")
    print(f"[{name}] pool of {args.rows} rows: {pool.truth()} ({time.time() - t0:.0f}s)", flush=True)

    filter_model = work / "filter"
    recipe = yaml.safe_load(Path(args.recipe).read_text())
    for entry in recipe["stages"]:
        if "download" in entry:  # the bench's web is on loopback; the trainer works at 32 px
            entry["download"].update(allow_private_networks=True, image_size=64, timeout=5)
        if "clip_score" in entry:
            entry["clip_score"]["model"] = str(filter_model)
            if "reference" in entry["clip_score"]:
                entry["clip_score"]["reference"] = str(work / "trusted_heldout.parquet")
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    variants = yaml.safe_load(Path(args.variants).read_text()) if args.variants else {}
    log = lambda line: print(f"[{name}] {line}", flush=True)  # noqa: E731
    # a fixed port per pool: the same URLs on a rerun, so --keep reuses the cached work
    with SampleWeb(samples=pool.samples, port=args.port + args.pools.index(name)) as web:
        if not (work / "pool.parquet").exists():
            web.write_pool(str(work / "pool.parquet"))
        experiment = {"name": f"bench-{name}", "pool": "pool.parquet", "recipe": "recipe.yaml",
                      "eval": "eval.parquet", "truth": {}, "variants": variants,
                      "train": {"model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                                "lr": 1e-3, "lock_text": args.model.startswith("lit"), "seeds": args.seeds,
                                "threads": args.threads}}
        (work / "experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
        experiment = load_experiment(work / "experiment.yaml")
        downloaded = download_pool(experiment, work / "ablation", RunOptions(progress=False), log=log)
        if not (filter_model / "open_clip_config.json").exists():
            t0 = time.time()
            train_filter_model(work / "trusted", output=filter_model, pool=downloaded / "shards",
                               threads=args.threads)
            log(f"filter model: trusted pairs + self-training on the pool in {time.time() - t0:.0f}s")
        heldout = evaluate(filter_model, pairs=work / "trusted_heldout.parquet")
        log(f"filter model on held-out trusted pairs: {json.dumps(heldout)}")
        report = run_ablation(experiment, work / "ablation", RunOptions(progress=False), log=log)
    print(summary_table(report), flush=True)
    shipped = shipped_recipes(work, Path(report["variants"]["raw"]["final"]) / "shards", filter_model, args)
    variants = report["variants"]
    base, raw, oracle = variants["base"], variants["raw"], variants["clean_oracle"]
    gains = [b["zeroshot_top1"] - r["zeroshot_top1"] for b, r in zip(base["runs"], raw["runs"])]
    return {
        "gain_vs_raw": round(100 * _mean(gains), 2),
        "seed_spread": max(base["seed_spread"] or 0.0, raw["seed_spread"] or 0.0),  # None: one seed, not measured
        "top1": {k: variants[k]["zeroshot_top1"] for k in variants},
        "clean_kept": base["truth"]["clean_kept"], "noise_removed": base["truth"]["noise_removed"],
        "mismatch_removed": base["truth"]["mismatch_removed"], "clean_rows_kept": base["truth"]["clean_rows_kept"],
        "meets_90_90": base["truth"]["clean_kept"] >= 0.9 and base["truth"]["mismatch_removed"] >= 0.9,
        "oracle_gap": round(100 * (oracle["zeroshot_top1"] - base["zeroshot_top1"]), 2),
        "filter_model": heldout, "warnings": base["warnings"], "wall_s": report["wall_s"],
        "shipped_recipes": shipped,
        "no_silent_loss": all(r["clean_kept"] >= 0.5 or r["warnings"] for r in shipped.values() if "skipped" not in r),
    }


def shipped_recipes(work: Path, downloaded: Path, filter_model: Path, args) -> dict:
    """Every recipe in pipelines/recipes/ over the downloaded pool (download stage left
    out: the pool is already fetched): clean pairs kept, and whether the run warned."""
    metadata = work / "metadata.json"
    if not metadata.exists():
        cli.main(["metadata", "build", "--captions", str(work / "pool.parquet"), "--output", str(metadata),
                  "--min-count", "5", "--no-bigrams"])
    # TARGET_IMAGES (DataComp image-based): the held-out trusted pairs stand in for a
    # downstream task's images; the LAION heads need published ViT-L/14 head files: skipped
    os.environ.update(CLIPCURATE_FILTER_MODEL=str(filter_model), CLIP_MODEL=str(filter_model),
                      CLIPCURATE_FILTER_REFERENCE=str(work / "trusted_heldout.parquet"),
                      TARGET_IMAGES=str(work / "trusted_heldout.parquet"),
                      CLIPCURATE_METADATA=str(metadata), METACLIP_METADATA=str(metadata))
    clean = _clean(downloaded)
    out = {}
    for path in sorted(RECIPE.parent.glob("*.yaml")):
        try:
            raw = expand_env(yaml.safe_load(path.read_text()), str(path))
        except RecipeError as err:  # an input only its user has (head files)
            out[path.stem] = {"skipped": str(err)}
            print(f"[shipped] {path.stem}: skipped ({err})", flush=True)
            continue
        raw["stages"] = [e for e in raw["stages"] if "download" not in (e if isinstance(e, dict) else {e: 0})]
        recipe, stages = parse_recipe(raw, source=str(path))
        run = work / "shipped" / path.stem
        t0 = time.time()
        if (run / "manifest.json").exists():  # --keep: an earlier run of this recipe
            manifest = json.loads((run / "manifest.json").read_text())
        else:
            shutil.rmtree(run, ignore_errors=True)
            manifest = run_pipeline(recipe, stages, str(downloaded), str(run), RunOptions(progress=False))
        out[path.stem] = {"clean_kept": round(_clean(run / "shards") / clean, 4), "warnings": manifest["warnings"],
                          "kept": manifest["totals"]["kept"], "wall_s": round(time.time() - t0, 1)}
        print(f"[shipped] {path.stem}: clean kept {out[path.stem]['clean_kept']:.1%}, "
              f"{len(manifest['warnings'])} warnings", flush=True)
    return out


def _clean(shards: Path) -> int:
    return sum(pc.sum(pc.equal(pq.read_table(p, columns=["sample_kind"]).column("sample_kind"), "ok")).as_py() or 0
               for p in sorted(Path(shards).glob("*.parquet")))


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else 0.0


if __name__ == "__main__":
    sys.exit(main())
