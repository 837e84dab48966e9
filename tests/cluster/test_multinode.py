"""The same recipe on a 3-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine):
same output as the embedded run, GPU work only on the GPU node, a worker node killed
mid-run, and a driver killed mid-run then rerun.

Nodes, as in cluster.yaml: a head (GCS and driver, no ``curate_cpu``), a CPU worker
with ``curate_cpu``, a worker with a (logical) GPU and ``curate_gpu``. One CPU each:
this machine has two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import ray

import cluster_stages
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.pipelines.runner import CPU_NODE_RESOURCE, RunOptions, run_pipeline
from clipcurate.curation.sampleweb import SampleWeb

ray.cloudpickle.register_pickle_by_value(cluster_stages)

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
RECIPE = {
    "name": "cluster-test",
    "input": {"partition_size": 20},
    "output": {"shard_rows": 50},
    "stages": [
        {"download": {"image_size": 64, "timeout": 60, "batch_size": 20, "thread_count": 8,
                      "allow_private_networks": True}},
        {"basic_filter": {"min_image_side": 64}},
        {"language_filter": {"keep_languages": ["en"]}},
    ],
}


# The driver-kill test runs the download alone: the filters' 4096-row batches would hold
# back every phase-1 block of this small pool until the last download.
DOWNLOAD_ONLY = {**RECIPE, "stages": RECIPE["stages"][:1]}


def _recipe_stages(recipe: dict = RECIPE):
    return parse_recipe(recipe)


def _full_stages():
    """The recipe plus a CPU stage that records its node, a GPU model stage and a
    global stage."""
    recipe, stages = _recipe_stages()
    return recipe, [cluster_stages.NodeTag(), *stages, cluster_stages.GpuTag(), cluster_stages.CaptionDedup()]


def _rows(out: Path, folder: str, columns: list[str]) -> list[dict]:
    rows = []
    for path in sorted((out / folder).glob("*.parquet")):
        rows += pq.read_table(path, columns=columns).to_pylist()
    return rows


def _outcome(out: Path) -> dict[str, str | None]:
    """uid -> reject reason (None when kept); fails on a duplicated uid."""
    kept = [r["uid"] for r in _rows(out, "shards", ["uid"])]
    rejected = {r["uid"]: r["reject"] for r in _rows(out, "rejects", ["uid", "reject"])}
    assert len(kept) == len(set(kept)) and not set(kept) & set(rejected)
    return {**{uid: None for uid in kept}, **rejected}


def _differences(run: dict, reference: dict) -> dict:
    """uid -> (reason here, reason in the reference) where the two runs disagree."""
    return {uid: (run.get(uid, "absent"), reference.get(uid, "absent"))
            for uid in set(run) | set(reference) if run.get(uid, "absent") != reference.get(uid, "absent")}


@pytest.fixture(scope="module")
def web():
    with SampleWeb(n=120, seed=5) as web:
        yield web


@pytest.fixture(scope="module")
def pool(web, tmp_path_factory):
    return web.write_pool(str(tmp_path_factory.mktemp("pool") / "pool.parquet"))


@pytest.fixture(scope="module")
def embedded(pool, tmp_path_factory):
    """The reference: both stage lists on an embedded single-machine Ray."""
    out = tmp_path_factory.mktemp("embedded")
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_pipeline(*_full_stages(), pool, str(out / "full"), RunOptions(progress=False))
        run_pipeline(*_recipe_stages(DOWNLOAD_ONLY), pool, str(out / "download"), RunOptions(progress=False))
    finally:
        ray.shutdown()
    return SimpleNamespace(full=_outcome(out / "full"), download=_outcome(out / "download"))


@pytest.fixture(scope="module")
def cluster(embedded):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cpu = cluster.add_node(num_cpus=1, resources={CPU_NODE_RESOURCE: 1})
        gpu = cluster.add_node(num_cpus=1, num_gpus=1, resources={"curate_gpu": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        yield SimpleNamespace(cluster=cluster, head=cluster.head_node.node_id, cpu=cpu.node_id, gpu=gpu.node_id,
                              cpu_worker=cpu)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_three_nodes_give_the_embedded_output_and_gpu_work_stays_on_the_gpu_node(cluster, embedded, pool, tmp_path):
    assert len(ray.nodes()) == 3
    out = tmp_path / "out"
    manifest = run_pipeline(*_full_stages(), pool, str(out), RunOptions(progress=False))

    assert _differences(_outcome(out), embedded.full) == {}
    assert manifest["totals"]["input"] == 120
    assert any(s["name"] == "caption_dedup" and s["rejected"] > 0 for s in manifest["stages"])
    kept = _rows(out, "shards", ["cpu_node", "gpu_node", "gpu_ids"])
    assert kept
    # CPU work ran on the CPU worker only, not on the head or the GPU node; the GPU stage
    # asked for a GPU (decided on a GPU node: this driver has none) and ran only there
    assert {r["cpu_node"] for r in kept} == {cluster.cpu}
    assert {r["gpu_node"] for r in kept} == {cluster.gpu}
    assert {r["gpu_ids"] for r in kept} == {"0"}


def test_a_worker_node_killed_mid_run_loses_and_duplicates_nothing(cluster, embedded, pool, web, tmp_path):
    """The only CPU worker (it holds every CPU actor and task of the run) is SIGKILLed
    mid-download and a fresh node joins in its place, as when a spot node is reclaimed
    and the autoscaler replaces it. The run completes with the embedded output: Ray
    retries the lost tasks, restarts the lost actors on the new node and rebuilds lost
    blocks; the phase-1 writer's uid-hash names make a retried write overwrite its file.

    The run goes in a thread and the kill in the main one: ``Cluster.add_node`` installs
    a signal handler, which Python allows only on the main thread."""
    out = tmp_path / "out"
    result = {}

    def run():
        try:
            result["manifest"] = run_pipeline(*_recipe_stages(DOWNLOAD_ONLY), pool, str(out), RunOptions(progress=False))
        except BaseException as error:  # reported by the main thread
            result["error"] = error

    web.requests.clear()
    web.delay = 0.1  # slow enough that the kill lands mid-download
    runner = threading.Thread(target=run, daemon=True)
    try:
        runner.start()
        deadline = time.time() + 300
        while time.time() < deadline and runner.is_alive() and _images_served(web) < 30:
            time.sleep(0.05)
        served = _images_served(web)
        victim = cluster.cpu_worker
        cluster.cluster.remove_node(victim, allow_graceful=False)
        cluster.cpu_worker = cluster.cluster.add_node(num_cpus=1, resources={CPU_NODE_RESOURCE: 1})
        cluster.cpu = cluster.cpu_worker.node_id
        runner.join(timeout=400)
    finally:
        web.delay = 0.0
    assert not runner.is_alive(), "the run did not finish within 400 s of the kill"
    assert "error" not in result, result.get("error")
    assert 30 <= served < 120, served
    assert victim.node_id not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert result["manifest"]["totals"]["input"] == 120
    assert _differences(_outcome(out), embedded.download) == {}


def _images_served(web) -> int:
    return sum(1 for path, n in list(web.requests.items()) if path.startswith("/img/") and n)


def test_a_killed_driver_reruns_and_resumes(cluster, embedded, pool, web, tmp_path):
    """`curate run --address` as a separate driver, SIGKILLed mid phase 1; the same
    command resumes: same output as the embedded run, nothing fetched twice."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(DOWNLOAD_ONLY))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clipcurate.pipelines.cli", "run", str(recipe), "--input", pool, "--output", str(out),
           "--address", cluster.cluster.address, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    phase1 = out / "_work" / "phase1"
    web.delay = 0.2  # the kill must land before the last of the six blocks
    try:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not any(phase1.glob("block-*.parquet")):
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        _wait_for_dead_driver(proc.pid)
        done_urls = set()
        for path in phase1.glob("block-*.parquet"):
            done_urls.update(pq.read_table(path, columns=["url"]).column("url").to_pylist())
        assert done_urls and not (out / "manifest.json").exists()
        assert len(done_urls) < 120, "phase 1 had finished before the kill"
        before = dict(web.requests)

        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        web.delay = 0.0
    paths = [u[len(web.base_url):] for u in done_urls]
    assert [p for p in paths if web.requests[p] > before.get(p, 0)] == []
    assert json.loads((out / "manifest.json").read_text())["totals"]["input"] == 120
    assert _differences(_outcome(out), embedded.download) == {}


def _wait_for_dead_driver(pid: int, timeout: float = 60) -> None:
    """The cluster marks a killed driver's job dead, and stops its workers, in seconds;
    a rerun started before that could meet the old job's last writes."""
    from ray._private.state import jobs

    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(job["IsDead"] for job in jobs() if job["DriverPid"] == pid):
            return
        time.sleep(0.5)
    raise AssertionError(f"the job of killed driver {pid} is still alive after {timeout}s")
