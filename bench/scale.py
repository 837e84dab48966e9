"""Scale benchmark: the same caption-only run on an embedded Ray with 1 CPU and with 2.

200k synthetic pairs (no network, no images: the download stage is not run) go through
the CPU stages ``basic_filter`` -> ``language_filter`` (fastText lid.176, an actor
pool) -> ``dedup_minhash`` (global: MinHash signatures in parallel, LSH buckets grouped
with Ray Data, then the apply pass). Each CPU count runs in its own process with its
own ``ray.init(num_cpus=N)`` and bound to N cores (CPU affinity, inherited by Ray's
raylet and workers): without the binding the "1 CPU" run would still do its Ray
bookkeeping, driver and object transfers on the machine's other cores, and the ratio
would measure the logical CPU limit, not scaling. The input is split into partitions
before the clock starts (the split is the same single-threaded driver step for both and
is reported on its own), so the timed part is the runner's phase 1, phase 2 and writer.

Prints samples/s for each, the speed-up, and the peak memory of every Ray worker
process (sampled with psutil every 0.2 s): resident (RSS, which counts the shared
object-store pages a worker has touched) and private (USS, the worker's own). The last
line is one JSON object; ``ratio`` is the speed-up from 1 to 2 CPUs.

    .venv/bin/python bench/scale.py            # 200k rows, a few minutes on 2 cores
    .venv/bin/python bench/scale.py --rows 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/dedup.py would shadow the dedup package for this script and its Ray workers
sys.path[:] = [REPO] + [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(REPO, "bench")]
RECIPE = {
    "name": "scale",
    "input": {"partition_size": 10_000},
    "output": {"shard_rows": 50_000},
    "stages": [
        {"basic_filter": {}},
        {"language_filter": {"keep_languages": ["en"]}},
        {"dedup_minhash": {"match": "caption"}},  # captions alone: the synthetic rows have no images
    ],
}
SUBJECTS = ("a red bicycle", "an old wooden chair", "a small brown dog", "a city street at night", "two cups of coffee",
            "a mountain lake", "a vintage car", "a bowl of fresh fruit", "a girl with an umbrella", "a yellow taxi")
PLACES = ("in the rain", "on a sunny beach", "next to a brick wall", "in a busy market", "under a tree",
          "in a modern kitchen", "on a snowy road", "at the train station", "in the garden", "by the window")
STYLES = ("photo of", "close-up of", "picture of", "black and white photo of", "painting of", "stock image of")
WORDS = tuple("""apple bridge candle garden window river forest mirror pillow basket castle ladder
jacket violin rocket bottle blanket button carpet cherry circle cloud cookie corner cotton desert
dragon engine feather finger flower frame glass guitar hammer harbor helmet island jungle kettle
lemon lion marble meadow needle ocean orange palace pencil pepper pigeon planet pocket puzzle rabbit
saddle sailor shadow shell silver spider spoon statue stone sugar tiger tomato tower trumpet tunnel
turtle valley velvet wagon wallet whale wheel winter wizard wolf yellow bright quiet heavy gentle
golden frozen hidden ancient narrow broken silent famous lovely simple tiny giant wooden rusty""".split())
FOREIGN = ("ein rotes Fahrrad im Regen vor einer Mauer", "une vieille chaise en bois dans la cuisine",
           "un perro marrón pequeño en la playa", "una tazza di caffè sul tavolo di legno",
           "um carro antigo na estação de trem")


def synthetic_pool(rows: int, seed: int = 0) -> pa.Table:
    """Captions from templates plus five random words (mostly distinct), ~8%
    near-duplicates (one word changed), ~8% other languages, ~4% too short."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, size=rows, p=[0.80, 0.08, 0.08, 0.04])
    s, p, st = rng.integers(len(SUBJECTS), size=rows), rng.integers(len(PLACES), size=rows), rng.integers(len(STYLES), size=rows)
    serial = rng.integers(10**6, size=rows)
    captions = []
    for i in range(rows):
        extra = " ".join(WORDS[j] for j in rng.integers(len(WORDS), size=5))
        base = f"{STYLES[st[i]]} {SUBJECTS[s[i]]} {PLACES[p[i]]} with {extra}, item {serial[i]} from the archive"
        if kind[i] == 1 and i:
            base = captions[i - 1].replace("archive", "museum") if "archive" in captions[i - 1] else base
        elif kind[i] == 2:
            base = f"{FOREIGN[serial[i] % len(FOREIGN)]} {serial[i]}"
        elif kind[i] == 3:
            base = "photo"
        captions.append(base)
    return pa.table({"url": [f"http://synthetic.invalid/{i}.jpg" for i in range(rows)], "caption": captions})


class WorkerMemory:
    """Peak RSS of every Ray worker process below this driver, sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self.private: dict[int, int] = {}
        self.driver_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = self.psutil.Process()
        while not self._stop.is_set():
            self.driver_peak = max(self.driver_peak, me.memory_info().rss)
            for proc in me.children(recursive=True):
                try:
                    if proc.name().startswith("ray::") or "default_worker.py" in " ".join(proc.cmdline()[:3]):
                        info = proc.memory_full_info()
                        self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), info.rss)
                        self.private[proc.pid] = max(self.private.get(proc.pid, 0), info.uss)
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                    continue
            self._stop.wait(self.interval)

    def __enter__(self) -> "WorkerMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        mib = [v / 2**20 for v in self.peaks.values()]
        private = [v / 2**20 for v in self.private.values()]
        return {"workers": len(mib), "worker_peak_rss_mib_max": round(max(mib, default=0), 1),
                "worker_peak_rss_mib_median": round(statistics.median(mib), 1) if mib else 0,
                "worker_peak_uss_mib_max": round(max(private, default=0), 1),
                "worker_peak_uss_mib_median": round(statistics.median(private), 1) if private else 0,
                "driver_peak_rss_mib": round(self.driver_peak / 2**20, 1)}


def run_one(cpus: int, pool: str, out: str) -> dict:
    """One measurement in this process: embedded Ray with ``cpus`` CPUs."""
    import ray

    from clipcurate.pipelines.readers import split_input
    from clipcurate.pipelines.recipe import parse_recipe
    from clipcurate.pipelines.runner import WORK, RunOptions, run_pipeline
    from clipcurate.pipelines.storage import Storage

    recipe, stages = parse_recipe(RECIPE)
    t0 = time.perf_counter()
    index = split_input(pool, recipe.input, Storage.at(out).child(WORK))
    split_s = time.perf_counter() - t0
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        with WorkerMemory() as memory:
            t0 = time.perf_counter()
            manifest = run_pipeline(recipe, stages, pool, out, RunOptions(progress=False))
            wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"cpus": cpus, "rows": index["rows"], "split_s": round(split_s, 2), "run_s": round(wall, 2),
            "samples_per_s": round(index["rows"] / wall, 1), "kept": manifest["totals"]["kept"],
            "funnel": {s["name"]: s["rejected"] for s in manifest["stages"]}, **memory.summary()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child: one CPU count
    parser.add_argument("--pool", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.pool, args.out)))
        return 0

    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench/scale.py needs 2 cores to bind the 2 CPU run to")
    workdir = tempfile.mkdtemp(prefix="bench-scale-")
    try:
        pool = os.path.join(workdir, "pool.parquet")
        pq.write_table(synthetic_pool(args.rows), pool)
        results = {}
        for cpus in (1, 2):
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
            cmd = [sys.executable, os.path.abspath(__file__), "--one", str(cpus), "--pool", pool,
                   "--out", os.path.join(workdir, f"out-{cpus}")]
            cores = sorted(os.sched_getaffinity(0))[:cpus]
            done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                                  preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores))
            if done.returncode:
                sys.exit(f"{cpus} CPU run failed:\n{done.stderr[-3000:]}")
            results[cpus] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[cpus]
            print(f"{cpus} CPU: {r['rows']} rows in {r['run_s']:.1f} s = {r['samples_per_s']:.0f} samples/s "
                  f"(split {r['split_s']:.1f} s, not timed); kept {r['kept']}; {r['workers']} Ray workers, "
                  f"peak per worker: RSS max {r['worker_peak_rss_mib_max']:.0f} MiB "
                  f"(median {r['worker_peak_rss_mib_median']:.0f}), private max {r['worker_peak_uss_mib_max']:.0f} MiB "
                  f"(median {r['worker_peak_uss_mib_median']:.0f}); driver {r['driver_peak_rss_mib']:.0f} MiB")
        assert results[1]["kept"] == results[2]["kept"], "1 and 2 CPUs kept different rows"
        ratio = results[2]["samples_per_s"] / results[1]["samples_per_s"]
        print(f"speed-up 1 -> 2 CPUs: {ratio:.2f}x (target >= 1.6x); load average now {os.getloadavg()[0]:.1f}")
        print(json.dumps({"bench": "scale", "rows": args.rows, "stages": [next(iter(s)) for s in RECIPE["stages"]],
                          "cpus_1": results[1], "cpus_2": results[2], "ratio": round(ratio, 3),
                          "load_avg_1m": round(os.getloadavg()[0], 2)}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
