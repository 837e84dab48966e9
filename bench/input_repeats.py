"""Input split benchmark: does giving uids to repeated (url, caption) rows cost about
linearly in rows, on a crawl-like input full of repeats?

The input at n rows: a quarter are 20 templated pairs (a stock photo URL with its alt
text) repeated n/80 times each, half are pairs that appear twice, a quarter are
distinct, in a fixed shuffled order: half the rows are repeats. The baseline is the
split of n all-distinct rows of the same lengths, timed in the same run. Timed:
``split_input`` on one parquet file (read, uids and reject reasons, partitions written),
best of ``--repeat`` runs.

Prints seconds per size for both inputs and the growth exponent log2(t(4n) / t(2n))
(1 is linear, 2 quadratic). The last line is one JSON object with ``rows``, the seconds,
``growth_exponent`` and ``ratio`` (repeats / distinct at 4n; ``ratio_per_size``: a
ratio that stays flat says the repeats add a constant factor, whatever the machine's
load does to both exponents).

    .venv/bin/python bench/input_repeats.py              # 250k, 500k, 1M rows: ~1 minute on 2 cores
    .venv/bin/python bench/input_repeats.py --rows 25000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [REPO] + [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(REPO, "bench")]

from clipcurate.pipelines.readers import split_input  # noqa: E402
from clipcurate.pipelines.recipe import InputConfig  # noqa: E402

TEMPLATES = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=250_000, help="n: sizes n, 2n and 4n are timed")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (best is kept)")
    args = parser.parse_args(argv)
    sizes = [args.rows, 2 * args.rows, 4 * args.rows]
    seconds: dict[str, dict[str, float]] = {"repeats": {}, "distinct": {}}
    with tempfile.TemporaryDirectory() as folder:
        for n in sizes:
            for kind in ("repeats", "distinct"):
                path = os.path.join(folder, f"{kind}-{n}.parquet")
                pq.write_table(_pool(n, repeats=kind == "repeats"), path)
                seconds[kind][str(n)] = min(_time_split(path, os.path.join(folder, f"work-{kind}-{n}-{i}"))
                                            for i in range(args.repeat))
                print(f"{kind:9s} {n:>9,d} rows  {seconds[kind][str(n)]:7.2f} s", flush=True)
    exponent = {kind: math.log2(s[str(sizes[2])] / s[str(sizes[1])]) for kind, s in seconds.items()}
    ratios = {str(n): round(seconds["repeats"][str(n)] / seconds["distinct"][str(n)], 3) for n in sizes}
    print(f"growth exponent 2n -> 4n: repeats {exponent['repeats']:.2f}, distinct {exponent['distinct']:.2f}; "
          f"repeats / distinct per size: {', '.join(f'{r:.2f}' for r in ratios.values())}")
    print(json.dumps({"rows": sizes, "seconds": seconds, "growth_exponent": round(exponent["repeats"], 3),
                      "growth_exponent_distinct": round(exponent["distinct"], 3), "ratio": ratios[str(sizes[2])],
                      "ratio_per_size": ratios}))
    return 0


def _pool(n: int, *, repeats: bool) -> pa.Table:
    """``n`` (url, caption) rows; with ``repeats``, half of them repeat an earlier row."""
    ids = np.arange(n)
    if repeats:
        quarter = n // 4
        templated = np.arange(quarter) % TEMPLATES  # 20 pairs, n/80 copies each
        twice = TEMPLATES + np.repeat(np.arange(quarter), 2)  # n/4 pairs, two copies each
        distinct = TEMPLATES + quarter + np.arange(n - len(templated) - len(twice))
        ids = np.random.default_rng(0).permutation(np.concatenate([templated, twice, distinct]))
    return pa.table({"url": [f"https://img.example.com/photos/{i:09d}.jpg" for i in ids],
                     "caption": [f"stock photo of a red bicycle leaning on a wall, item {i}" for i in ids]})


def _time_split(path: str, work: str) -> float:
    start = time.perf_counter()
    index = split_input(path, InputConfig(partition_size=10_000), work)
    elapsed = time.perf_counter() - start
    assert index["rows"] == pq.ParquetFile(path).metadata.num_rows
    return elapsed


if __name__ == "__main__":
    sys.exit(main())
