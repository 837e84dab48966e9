"""Which DFN filter model to train offline: candidates at similar CPU budgets, measured
on how well they catch captions that describe another picture.

Data, all Fashion-MNIST (Debian ``dataset-fashion-mnist``), images upscaled to 64 px as
a pool holds them after download, captions from ``train.datasets.alt_text_captions``
(short web alt-text: "slim sneaker, item #3515", "IMG_2263 T-shirt"):

- trusted: 1,500 training images with alt-text (seed 0); the ``templated`` candidate
  gets the same images with prompt captions instead ("a photo of a sneaker.");
- pool: 4,000 other training images with alt-text (seed 2), a quarter of them given the
  caption of a picture of another class (``mismatch_captions``);
- held-out pairs: the first 2,000 test images with alt-text (seed 1).

Each candidate trains through ``train.filter_model.train_filter_model`` (one torch
thread), then: mismatch ROC AUC on the held-out pairs (``train.api.evaluate``: each
image's true caption vs the caption of a held-out pair of another class), and on the
pool the share of clean pairs kept and of mismatched pairs removed (a) keeping the top
75 % by score (``clip_score``'s ``keep_top: 0.75``) and (b) keeping scores at or above
the 5th, 7th or 10th percentile of held-out true-pair scores (``p05``, ``p07``, ``p10``:
``clip_score``'s ``keep_clean: 0.95 / 0.93 / 0.90`` with the held-out pairs as
reference). ``cpu_s`` is the training's CPU time (steadier than wall time on a shared
machine); self-training counts both rounds and the pool scoring. The goal: >= 90 % of
mismatches removed with >= 90 % of clean pairs kept. Last line: one JSON object,
``ratio`` = best candidate's AUC / the baseline's (clip-tiny, 300 steps).

    .venv/bin/python bench/filter_model.py                   # all candidates, ~25 min on 1 core
    .venv/bin/python bench/filter_model.py --only clip-tiny-300 lit-resnet-aug-self-train
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from clipcurate.train import datasets  # noqa: E402
from clipcurate.train.api import evaluate  # noqa: E402
from clipcurate.train.evaluate import score_pairs  # noqa: E402
from clipcurate.train.filter_model import read_pairs, train_filter_model  # noqa: E402

BASELINE = "clip-tiny-300"
RECOMMENDED = "lit-resnet-aug-self-train"
KEEP_TOP = 0.75
# thresholds at the 5th, 7th and 10th percentile of held-out true-pair scores (keep_clean 0.95, 0.93, 0.90)
KEEP_CLEAN = {"p05": 0.95, "p07": 0.93, "p10": 0.90}
TARGET = 0.90  # share of mismatches removed and of clean pairs kept


@dataclass(frozen=True)
class Candidate:
    name: str
    what: str
    options: dict = field(default_factory=dict)  # train_filter_model arguments
    trusted: str = "alt-text"  # or "templated"
    self_train: bool = False


CANDIDATES = (
    Candidate(BASELINE, "tiny CLIP from scratch, 300 steps (the issue's baseline)",
              dict(model="clip-tiny", lock_text=False, augment=False, steps=300, lr=5e-4)),
    Candidate("clip-tiny-aug-600", "tiny CLIP from scratch, augmented, 600 steps",
              dict(model="clip-tiny", lock_text=False, augment=True, steps=600)),
    Candidate("lit-vit-300", "LiT (lit-tiny: ViT image tower, locked MiniLM text tower), 300 steps",
              dict(model="lit-tiny", augment=False, steps=300)),
    Candidate("lit-vit-600", "LiT ViT, 600 steps: longer, no augmentation",
              dict(model="lit-tiny", augment=False, steps=600)),
    Candidate("lit-vit-aug-600", "LiT ViT + augmentation, 600 steps",
              dict(model="lit-tiny", augment=True, steps=600)),
    Candidate("lit-vit-aug-self-train", "LiT ViT + augmentation, 300 steps, + pool's top half, fresh 400 steps",
              dict(model="lit-tiny", augment=True, steps=300, self_train_steps=400), self_train=True),
    Candidate("lit-resnet-aug-300", "LiT with a small ResNet image tower (lit-resnet-tiny) + augmentation, 300 steps",
              dict(model="lit-resnet-tiny", augment=True, steps=300)),
    Candidate("lit-resnet-aug-300-templated", "as lit-resnet-aug-300, trusted captions from 8 prompt templates",
              dict(model="lit-resnet-tiny", augment=True, steps=300), trusted="templated"),
    Candidate(RECOMMENDED, "lit-resnet-aug-300, + pool's top half, fresh 400 steps (train_filter_model defaults)",
              dict(), self_train=True),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/clipcurate-bench-filter-model")
    parser.add_argument("--only", nargs="+", help=f"candidates to run (of {', '.join(c.name for c in CANDIDATES)})")
    parser.add_argument("--trusted", type=int, default=1500)
    parser.add_argument("--pool", type=int, default=4000)
    parser.add_argument("--heldout", type=int, default=2000)
    parser.add_argument("--mismatch", type=float, default=0.25, help="share of pool captions swapped")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every candidate (data stay fixed)")
    args = parser.parse_args(argv)
    names = {c.name for c in CANDIDATES}
    unknown = set(args.only or ()) - names
    if unknown:
        parser.error(f"unknown candidate(s) {sorted(unknown)}")
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    data = write_data(work, args)
    print(f"data: {args.trusted} trusted, {args.pool} pool ({data['pool_mismatched']} mismatched), "
          f"{args.heldout} held-out pairs in {time.perf_counter() - started:.0f}s", flush=True)
    pool = read_pairs(data["pool"])
    mismatched = np.asarray(pq.read_table(data["pool"], columns=["sample_kind"]).column("sample_kind")
                            .to_pylist()) == "mismatch"

    figures = {}
    header = (f"{'candidate':<30} {'steps':>5} {'train_s':>7} {'cpu_s':>6} {'AUC':>6} | {'top 75 %: kept':>14} "
              f"{'removed':>7}" + "".join(f" | {k + ': kept':>9} {'removed':>7}" for k in KEEP_CLEAN))
    for candidate in CANDIDATES:
        if args.only and candidate.name not in args.only:
            continue
        print(f"{candidate.name}: {candidate.what}", flush=True)
        figures[candidate.name] = run_candidate(candidate, work, data, pool, mismatched, args.threads, args.seed)
        print(json.dumps({candidate.name: figures[candidate.name]}), flush=True)

    print(header)
    for name, f in figures.items():
        print(f"{name:<30} {f['steps']:>5} {f['train_s']:>7.0f} {f['cpu_s']:>6.0f} {f['mismatch_auc']:>6.3f} | "
              f"{f['keep_top']['clean_kept']:>14.3f} {f['keep_top']['mismatch_removed']:>7.3f}"
              + "".join(f" | {f[k]['clean_kept']:>9.3f} {f[k]['mismatch_removed']:>7.3f}" for k in KEEP_CLEAN))
    best = max(figures, key=lambda n: figures[n]["mismatch_auc"])
    meets = {n: [k for k in ("keep_top", *KEEP_CLEAN) if f[k]["clean_kept"] >= TARGET
                 and f[k]["mismatch_removed"] >= TARGET] for n, f in figures.items()}
    summary = {"bench": "filter_model", "recommended": RECOMMENDED, "data": {"trusted": args.trusted, "pool": args.pool,
                                                 "pool_mismatched": data["pool_mismatched"],
                                                 "heldout": args.heldout, "image_px": 64, "threads": args.threads,
                                                 "seed": args.seed},
               "candidates": figures, "best": best, "best_auc": figures[best]["mismatch_auc"],
               "meets_90_90_at": meets, "wall_s": round(time.perf_counter() - started, 1)}
    if BASELINE in figures:
        summary["baseline"] = BASELINE
        summary["baseline_auc"] = figures[BASELINE]["mismatch_auc"]
        summary["ratio"] = round(figures[best]["mismatch_auc"] / figures[BASELINE]["mismatch_auc"], 4)
        if RECOMMENDED in figures:
            summary["recommended_ratio"] = round(figures[RECOMMENDED]["mismatch_auc"]
                                                 / figures[BASELINE]["mismatch_auc"], 4)
    print(json.dumps(summary))
    return 0


def write_data(work: Path, args) -> dict:
    """Trusted shards (alt-text and templated), the pool and the held-out pairs."""
    images, labels = datasets.fashion_mnist("train")
    test_images, test_labels = datasets.fashion_mnist("test")
    order = np.random.default_rng(0).permutation(len(labels))
    trusted = order[:args.trusted]
    pool = order[args.trusted:args.trusted + args.pool]
    photos = datasets.product_photos(images[trusted])
    datasets.write_shards(work / "trusted", photos, datasets.alt_text_captions(labels[trusted], seed=0),
                          row_group_size=256)
    datasets.write_shards(work / "trusted-templated", photos,
                          datasets.fashion_mnist_captions(labels[trusted], seed=0), row_group_size=256)
    captions, mismatched = datasets.mismatch_captions(labels[pool], datasets.alt_text_captions(labels[pool], seed=2),
                                                      fraction=args.mismatch, seed=3)
    encoded = [datasets.encode_png(p) for p in datasets.product_photos(images[pool])]
    pq.write_table(pa.table({"image": pa.array(encoded, pa.binary()), "caption": captions,
                             "label": [datasets.FASHION_MNIST_CLASSES[c] for c in labels[pool]],
                             "sample_kind": np.where(mismatched, "mismatch", "ok").tolist()}),
                   work / "pool.parquet")
    held = np.arange(args.heldout)
    datasets.write_labeled(work / "heldout.parquet", datasets.product_photos(test_images[held]),
                           [datasets.FASHION_MNIST_CLASSES[c] for c in test_labels[held]],
                           datasets.alt_text_captions(test_labels[held], seed=1))
    return {"trusted": work / "trusted", "trusted-templated": work / "trusted-templated",
            "pool": work / "pool.parquet", "heldout": work / "heldout.parquet",
            "pool_mismatched": int(mismatched.sum())}


def run_candidate(candidate: Candidate, work: Path, data: dict, pool: pa.Table, mismatched: np.ndarray,
                  threads: int, seed: int) -> dict:
    trusted = data["trusted"] if candidate.trusted == "alt-text" else data["trusted-templated"]
    output = work / "models" / candidate.name
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_filter_model(trusted, output=output, pool=data["pool"] if candidate.self_train else None,
                                threads=threads, seed=seed, **candidate.options)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"what": candidate.what, "steps": result.steps, "train_s": round(wall, 1), "cpu_s": round(cpu, 1),
            **measure(result.output, data, pool, mismatched), "pool_added": result.pool_added}


def measure(model: Path, data: dict, pool: pa.Table, mismatched: np.ndarray) -> dict:
    """Mismatch AUC on the held-out pairs; clean kept / mismatches removed on the pool at
    ``keep_top`` and at the held-out true-pair score percentiles (``keep_clean``)."""
    held = evaluate(model, pairs=data["heldout"])
    true_scores = score_pairs(model, read_pairs(data["heldout"]))
    scores = score_pairs(model, pool)
    figures = {"mismatch_auc": held["mismatch_auc"],
               "keep_top": _kept_removed(scores >= np.quantile(scores, 1 - KEEP_TOP), mismatched)}
    for name, keep_clean in KEEP_CLEAN.items():
        threshold = round(float(np.quantile(true_scores, 1 - keep_clean)), 6)
        figures[name] = dict(_kept_removed(scores >= threshold, mismatched), min_score=threshold)
    return figures


def _kept_removed(kept: np.ndarray, mismatched: np.ndarray) -> dict:
    return {"clean_kept": round(float(kept[~mismatched].mean()), 4),
            "mismatch_removed": round(float((~kept[mismatched]).mean()), 4)}


if __name__ == "__main__":
    sys.exit(main())
