"""The runner's CPU budget per streaming plan (``RayExecutor._budget``), without Ray:
one actor of every pool and one task always fit on the smallest CPU node, and on a
cluster autoscaling pools leave one task's CPUs free for rebuilding lost blocks."""

from __future__ import annotations

import pytest

from clipcurate.pipelines.runner import CPU_NODE_RESOURCE, CPU_NODE_SHARE, RayExecutor
from clipcurate.pipelines.stage import Resources, Stage


class Model(Stage):
    """A stage with setup(): an autoscaling actor pool of 1-CPU actors."""

    name = "model"

    def setup(self) -> None:
        pass


class Light(Stage):
    name = "light"


class Pinned(Model):
    name = "pinned"

    def resources(self) -> Resources:
        return Resources(num_cpus=1.0, concurrency=2)


def _executor(nodes: list[float], multi_node: bool) -> RayExecutor:
    executor = RayExecutor.__new__(RayExecutor)  # the budget reads only these fields
    executor.cpu_placement = {CPU_NODE_RESOURCE: CPU_NODE_SHARE} if multi_node else None
    executor.node_cpus, executor.cpu_capacity = min(nodes), sum(nodes)
    executor.multi_node = multi_node
    executor.gpus_elsewhere = False
    executor._resources = {}
    return executor


@pytest.mark.parametrize(("nodes", "multi_node", "stages", "share", "pool_size"), [
    ([2], False, [Light(), Model()], 1.0, 2),  # one machine: one actor per CPU
    ([1], False, [Model()], 0.5, 1),
    ([1], True, [Model()], 0.5, 1),  # the test cluster's one CPU worker: actor + task
    ([2, 2, 2, 2], True, [Model()], 1.0, 7),  # 8 CPUs, one task's CPU kept free
    ([4, 4], True, [Model(), Model()], 1.0, 3),  # two pools share what is left
    ([4, 4], True, [Pinned(), Model()], 1.0, 5),  # fixed pools count first
    ([2, 2], True, [Light()], 1.0, 1),  # no pool
])
def test_pools_leave_a_task_room_on_clusters(nodes, multi_node, stages, share, pool_size):
    budget = _executor(nodes, multi_node)._budget(stages)
    assert (budget.share, budget.pool_size) == (share, pool_size)
    # one actor of every pool plus one task fit on the smallest node
    fixed = sum(2 for s in stages if isinstance(s, Pinned))
    growing = sum(1 for s in stages if type(s) is Model)
    assert budget.share * (fixed + growing + 1) <= min(nodes) + 1e-9
    if multi_node and growing:  # and on a cluster, full pools still leave a task's CPUs
        assert budget.share * (fixed + growing * budget.pool_size + 1) <= sum(nodes) + 1e-9
