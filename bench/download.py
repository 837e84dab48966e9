"""Benchmark: our download stage vs standalone img2dataset on the same URL list.

A loopback web (a separate process, Python's ThreadingHTTPServer speaking HTTP/1.1)
serves N generated JPEGs (coloured shapes, 256-640 px a side). Both tools fetch the same
URL list with the same number of processes and threads per process, the same resize
(keep_ratio to --image-size, JPEG quality 95), timeout and retries; img2dataset gets
``extract_exif=False, compute_hash=None`` so neither does work the other skips.

Ours runs through the real runner (``run_pipeline``). Two figures come from that one run:
- ``ours`` (the ``ratio``): the stage on Ray, i.e. the runner's phase 1: read the input
  partitions, the download stage in an actor pool of up to P workers (actor start and
  img2dataset import included), write the parquet blocks with images and reasons. That is
  what ``img2dataset.download`` does (process pool start, its reader, fetch, resize, its
  parquet writer), timed around the call;
- ``ours_full_run`` (``ratio_full_run``): the whole ``run_pipeline``, which also splits the
  input, re-reads phase 1 to write shards/ and rejects/ and checks the accounting into the
  manifest, work img2dataset does not do.
Ray itself is started before the clock (once per session or cluster). With --repeats 2
the order alternates and each side's best time counts. The last line is one JSON object.

    .venv/bin/python bench/download.py --n 2000 --processes 2 --threads 32
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_ACCEPT_CLUSTER_RESOURCE_WARNING", "1")

SERVER = r"""
import functools, sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=sys.argv[1]))
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def make_images(folder: str, n: int, seed: int = 0) -> list[str]:
    import numpy as np

    from clipcurate.curation.sampleweb import BACKGROUNDS, COLOURS, SHAPES, encode_jpeg, render_shape

    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        size = (int(rng.integers(256, 641)), int(rng.integers(256, 641)))
        image = render_shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))),
                             str(rng.choice(list(BACKGROUNDS))), size, rng)
        name = f"{i:06d}.jpg"
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(encode_jpeg(image, quality=90))
        names.append(name)
    return names


PHASE1: list[float] = []


def _timed_phase1(run_phase1):
    """Measure the runner's phase 1 from the outside (the runner stays as it is)."""
    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return run_phase1(self, *args, **kwargs)
        finally:
            PHASE1.append(time.perf_counter() - started)
    return timed


def run_ours(pool: str, out: str, args) -> tuple[float, float, int]:
    from clipcurate.pipelines import runner
    from clipcurate.pipelines.recipe import parse_recipe
    from clipcurate.pipelines.runner import RunOptions, run_pipeline

    if not hasattr(runner.RayExecutor.run_phase1, "__wrapped_phase1__"):
        runner.RayExecutor.run_phase1 = _timed_phase1(runner.RayExecutor.run_phase1)
        runner.RayExecutor.run_phase1.__wrapped_phase1__ = True

    recipe, stages = parse_recipe({
        "input": {"partition_size": args.partition},
        "output": {"shard_rows": 10_000},
        "stages": [{"download": {
            "image_size": args.image_size, "resize_mode": "keep_ratio", "encode_quality": 95,
            "timeout": args.timeout, "retries": args.retries, "thread_count": args.threads,
            "batch_size": args.partition, "host_concurrency": args.threads,  # one host serves everything
            "allow_private_networks": True,
        }}],
    })
    started = time.perf_counter()
    manifest = run_pipeline(recipe, stages, pool, out, RunOptions(progress=False, num_cpus=args.processes))
    return PHASE1[-1], time.perf_counter() - started, manifest["totals"]["kept"]


def run_img2dataset(pool: str, out: str, args) -> tuple[float, int]:
    import img2dataset

    started = time.perf_counter()
    img2dataset.download(
        url_list=pool, input_format="parquet", url_col="url", caption_col="caption", output_format="parquet",
        output_folder=out, processes_count=args.processes, thread_count=args.threads,
        image_size=args.image_size, resize_mode="keep_ratio", encode_quality=95, encode_format="jpg",
        number_sample_per_shard=args.partition, timeout=args.timeout, retries=args.retries,
        extract_exif=False, compute_hash=None, distributor="multiprocessing", enable_wandb=False,
    )
    elapsed = time.perf_counter() - started
    successes = 0
    for path in glob.glob(os.path.join(out, "*_stats.json")):
        with open(path) as handle:
            successes += json.load(handle)["successes"]
    return elapsed, successes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images served (>= 2000 for the done-when check)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--partition", type=int, default=500, help="rows per partition / img2dataset shard")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--timeout", type=int, default=10)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        site = os.path.join(tmp, "site")
        os.makedirs(site)
        t0 = time.perf_counter()
        names = make_images(site, args.n)
        print(f"generated {args.n} images in {time.perf_counter() - t0:.1f}s", flush=True)
        server = subprocess.Popen([sys.executable, "-c", SERVER, site], stdout=subprocess.PIPE, text=True)
        try:
            port = int(server.stdout.readline())
            pool = os.path.join(tmp, "pool.parquet")
            pq.write_table(pa.table({
                "url": [f"http://127.0.0.1:{port}/{name}" for name in names],
                "caption": [f"image {i}" for i in range(len(names))],
            }), pool)
            ray.init(address="local", num_cpus=args.processes, include_dashboard=False, log_to_driver=False)
            ours, full, theirs = [], [], []
            for repeat in range(args.repeats):
                order = ("ours", "img2dataset") if repeat % 2 == 0 else ("img2dataset", "ours")
                for name in order:
                    out = os.path.join(tmp, f"{name}-{repeat}")
                    if name == "ours":
                        seconds, whole, ok = run_ours(pool, out, args)
                        ours.append((seconds, ok))
                        full.append(whole)
                        print(f"ours full run {repeat}: {whole:7.2f}s  {args.n / whole:7.1f} samples/s", flush=True)
                    else:
                        seconds, ok = run_img2dataset(pool, out, args)
                        theirs.append((seconds, ok))
                    print(f"{name:<12} run {repeat}: {seconds:7.2f}s  {args.n / seconds:7.1f} samples/s  "
                          f"{ok} ok", flush=True)
            ray.shutdown()
        finally:
            server.terminate()
            server.wait()
    best_ours, best_theirs = min(ours), min(theirs)
    result = {
        "bench": "download",
        "n": args.n,
        "processes": args.processes,
        "threads": args.threads,
        "image_size": args.image_size,
        "ours": "download stage on Ray: the runner's phase 1 inside run_pipeline (Ray started before)",
        "ours_samples_per_s": round(args.n / best_ours[0], 1),
        "ours_full_run_samples_per_s": round(args.n / min(full), 1),
        "img2dataset_samples_per_s": round(args.n / best_theirs[0], 1),
        "ours_success": best_ours[1],
        "img2dataset_success": best_theirs[1],
        "same_success": len({ok for _, ok in ours + theirs}) == 1,
        "ratio": round(best_theirs[0] / best_ours[0], 3),
        "ratio_full_run": round(best_theirs[0] / min(full), 3),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
