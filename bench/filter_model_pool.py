"""How long should the filter model's self-training round be? Measured on the pool it scores.

``bench/filter_model.py`` compares filter-model recipes on held-out *trusted* pairs; what
matters to curation is how the model separates the *pool's* clean pairs from its
mismatched captions, and where ``clip_score``'s ``keep_matched`` cut lands. This bench
takes the pools ``bench/curation.py`` downloaded (its ``--workdir``: the pool's trusted
pairs, its downloaded rows, and the rows the language filter passes, which is what
``clip_score`` scores in the recommended recipe), trains ``train_filter_model`` with each
``--configs`` entry (``STEPS:SELF_TRAIN_STEPS``) and seed, and reports per pool:

- ``auc``: ROC AUC of clean (``ok``) against mismatched pairs' cosine scores;
- ``keep_matched`` 0.5 / 0.8: clean kept and mismatches removed by that cut;
- ``clean_kept_at_90``: clean kept by the score cut that removes 90 % of mismatches.

    .venv/bin/python bench/filter_model_pool.py [--workdir /tmp/clipcurate-bench-curation]
        [--configs 300:400 300:800 600:800] [--seeds 0 1] [--pools fashion photos]

Models are kept in ``WORKDIR/filter-models/<pool>-<steps>-<self_train>-s<seed>`` and
reused on a rerun. Last line: JSON with the per-config means and ``ratio`` (the
candidate's mean AUC over the baseline's, the first config being the baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from clipcurate.filters.clip_score import ClipScore  # noqa: E402
from clipcurate.train.evaluate import roc_auc, score_pairs  # noqa: E402
from clipcurate.train.filter_model import train_filter_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/clipcurate-bench-curation", help="a bench/curation.py workdir")
    parser.add_argument("--pools", nargs="+", default=["fashion", "photos"])
    parser.add_argument("--configs", nargs="+", default=["300:400", "300:800", "600:800"],
                        help="STEPS:SELF_TRAIN_STEPS; the first is the baseline")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    torch.set_num_threads(1)
    rows = []
    for pool in args.pools:
        trusted, downloaded, scored = _pool_parts(work / pool)
        table = pq.read_table(scored)
        kinds = np.array(table.column("sample_kind").to_pylist())
        for config in args.configs:
            steps, self_train = (int(v) for v in config.split(":"))
            for seed in args.seeds:
                model = work / "filter-models" / f"{pool}-{steps}-{self_train}-s{seed}"
                started = time.time()
                if not (model / "open_clip_config.json").exists():
                    train_filter_model(trusted, output=model, pool=downloaded, steps=steps,
                                       self_train_steps=self_train, seed=seed, threads=1)
                row = {"pool": pool, "config": config, "seed": seed, **_figures(score_pairs(model, table), kinds),
                       "wall_s": round(time.time() - started)}  # training (unless cached) + scoring
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = _summary(rows, args.configs)
    print(f"{'config':<10}{'pool':<9}{'auc':>8}{'km0.5 clean/mm':>18}{'km0.8 clean/mm':>18}{'clean@90':>10}")
    for config, pools in summary["configs"].items():
        for pool, m in pools.items():
            print(f"{config:<10}{pool:<9}{m['auc']:>8.4f}{m['km0.5'][0]:>10.3f}/{m['km0.5'][1]:.3f}"
                  f"{m['km0.8'][0]:>10.3f}/{m['km0.8'][1]:.3f}{m['clean_kept_at_90']:>10.3f}")
    print(json.dumps(summary))
    return 0


def _pool_parts(pool_dir: Path) -> tuple[Path, list[str], list[str]]:
    """Trusted shards, the downloaded rows and the language filter's output of a
    bench/curation.py pool folder (the segments its ablation cached)."""
    report = json.loads((pool_dir / "ablation" / "ablation.json").read_text())
    downloaded = sorted(str(p) for p in (Path(report["variants"]["raw"]["final"]) / "shards").glob("*.parquet"))
    for manifest in (pool_dir / "ablation" / "cache").glob("*/manifest.json"):
        stages = json.loads(manifest.read_text())["stages"]
        if stages[-1]["name"] == "language_filter":
            return pool_dir / "trusted", downloaded, sorted(str(p) for p in (manifest.parent / "shards").glob("*.parquet"))
    raise SystemExit(f"{pool_dir}: no language_filter segment; run bench/curation.py first")


def _figures(scores: np.ndarray, kinds: np.ndarray) -> dict:
    ok, mismatch = kinds == "ok", kinds == "mismatch"
    valid = ~np.isnan(scores)
    out = {"auc": round(roc_auc(scores[ok & valid], scores[mismatch & valid]), 4)}
    for cut in (0.5, 0.8):  # the stage's own keep_matched cut (its mixture fit), not a copy of it
        keep = scores >= ClipScore(model="unused", keep_matched=cut)._mixture_cut(scores[valid])
        out[f"km{cut}"] = [round(float(keep[ok].mean()), 4), round(float(1 - keep[mismatch].mean()), 4)]
    line = np.quantile(scores[mismatch & valid], 0.9)
    out["clean_kept_at_90"] = round(float((scores[ok] > line).mean()), 4)
    return out


def _summary(rows: list[dict], configs: list[str]) -> dict:
    per: dict = {}
    for config in configs:
        for pool in dict.fromkeys(r["pool"] for r in rows):
            mine = [r for r in rows if r["config"] == config and r["pool"] == pool]
            per.setdefault(config, {})[pool] = {
                "auc": round(float(np.mean([r["auc"] for r in mine])), 4),
                "km0.5": [round(float(np.mean([r["km0.5"][i] for r in mine])), 4) for i in (0, 1)],
                "km0.8": [round(float(np.mean([r["km0.8"][i] for r in mine])), 4) for i in (0, 1)],
                "clean_kept_at_90": round(float(np.mean([r["clean_kept_at_90"] for r in mine])), 4),
                "seeds": len(mine)}
    mean_auc = {c: float(np.mean([m["auc"] for m in per[c].values()])) for c in configs}
    best = max(configs, key=lambda c: mean_auc[c])
    return {"bench": "filter_model_pool", "baseline": configs[0], "best": best,
            "ratio": round(mean_auc[best] / mean_auc[configs[0]], 4), "configs": per}


if __name__ == "__main__":
    sys.exit(main())
