"""Audit statistics: ours (polars lazy column scans) vs the by-hand way (pandas reads whole files).

Writes one synthetic run output (default 1,000,000 rows, no images; images would only
widen the gap, since the baseline reads every column), then in separate processes:
ours = ``compute_stats(out)``; baseline = ``pandas.read_parquet`` of shards and rejects
(all columns, as people do when they open the files by hand) and the same core numbers
(counts by reason, CLIP score histograms kept/rejected, caption word counts, languages,
duplicate group sizes). Prints wall time and peak RSS of each; the last line is JSON with
``ratio`` = baseline wall / ours wall.

    .venv/bin/python bench/audit.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OURS = """
import sys
from clipcurate.curation.audit.stats import compute_stats
s = compute_stats(sys.argv[1])
print(s["totals"]["kept"], len(s["reasons"]), s["quantities"]["clip_score"]["kept"]["count"])
"""

BASELINE = """
import sys, glob
import numpy as np, pandas as pd
out = sys.argv[1]
kept = pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(out + "/shards/*.parquet"))])
rej = pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(out + "/rejects/*.parquet"))])
reason = rej["reject"].str.split("=", n=1).str[0]
by_reason = reason.value_counts()
edges = np.linspace(min(kept.clip_score.min(), rej.clip_score.min()),
                    max(kept.clip_score.max(), rej.clip_score.max()), 41)
h_kept = np.histogram(kept.clip_score.dropna(), edges)[0]
h_rej = np.histogram(rej.clip_score.dropna(), edges)[0]
words_kept = kept.caption.str.split().str.len().describe()
words_rej = rej.caption.str.split().str.len().describe()
langs = pd.concat([kept.lang, rej.lang]).value_counts(dropna=False)
dups = rej.loc[reason.str.endswith(":duplicate_of"), "reject"].value_counts().add(1).value_counts()
print(len(kept), len(by_reason), int(h_kept.sum()))
"""


def measure(code: str, out: Path) -> dict:
    import psutil

    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    stdout, stderr = child.communicate()
    if child.returncode:
        raise SystemExit(stderr[-3000:])
    return {"wall_s": round(time.perf_counter() - started, 2), "peak_rss_mib": round(peak / 2**20),
            "answer": stdout.split()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from clipcurate.curation.audit.synthetic import write_synthetic_run

    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        out = Path(tmp) / "run"
        started = time.perf_counter()
        write_synthetic_run(out, args.rows, seed=0)
        print(f"synthetic output: {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        ours = measure(OURS, out)
        baseline = measure(BASELINE, out)
    if ours["answer"][:2] != baseline["answer"][:2] or ours["answer"][2] != baseline["answer"][2]:
        raise SystemExit(f"ours and the baseline disagree: {ours['answer']} vs {baseline['answer']}")
    print(f"ours (polars column scans): {ours['wall_s']} s, peak RSS {ours['peak_rss_mib']} MiB")
    print(f"baseline (pandas, whole files): {baseline['wall_s']} s, peak RSS {baseline['peak_rss_mib']} MiB")
    print(json.dumps({
        "bench": "audit_stats", "rows": args.rows,
        "ours_s": ours["wall_s"], "baseline_s": baseline["wall_s"],
        "ours_peak_rss_mib": ours["peak_rss_mib"], "baseline_peak_rss_mib": baseline["peak_rss_mib"],
        "ratio": round(baseline["wall_s"] / ours["wall_s"], 2),
        "rss_ratio": round(baseline["peak_rss_mib"] / max(ours["peak_rss_mib"], 1), 2),
    }))


if __name__ == "__main__":
    main()
