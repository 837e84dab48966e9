"""Small stages for the cluster tests: they record where they ran, and one is global.

They are pickled by value (``ray.cloudpickle.register_pickle_by_value``) so Ray workers
need not import this test folder.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.pipelines.stage import GlobalStage, Resources, Stage, reject_rows, set_column


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _gpu_visible() -> bool:
    """What ``torch.cuda.is_available()`` answers, for Ray's logical GPUs: Ray sets
    CUDA_VISIBLE_DEVICES in a worker that holds a GPU."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "NoDevFiles")


class NodeTag(Stage):
    """A CPU stage with a pool of two actors that writes the node it ran on into
    ``cpu_node`` (two actors, so two CPU nodes can take part)."""

    name = "node_tag"
    adds = {"cpu_node": pa.string()}

    def resources(self) -> Resources:
        return Resources(num_cpus=1, batch_size=20, concurrency=2)

    def setup(self) -> None:
        self._node = _node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return set_column(batch, "cpu_node", pa.array([self._node] * batch.num_rows, pa.string()))


class GpuTag(Stage):
    """A model stage in the manner of clip_score: ``device: auto`` picks a GPU when one
    is visible where ``resources()`` is asked, and the actor records its node and GPU."""

    name = "gpu_tag"
    adds = {"gpu_node": pa.string(), "gpu_ids": pa.string()}

    def resources(self) -> Resources:
        return Resources(num_cpus=1, num_gpus=1.0 if _gpu_visible() else 0.0, batch_size=20)

    def setup(self) -> None:
        self._node = _node_id()
        self._gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        batch = set_column(batch, "gpu_node", pa.array([self._node] * n, pa.string()))
        return set_column(batch, "gpu_ids", pa.array([self._gpus] * n, pa.string()))


class CaptionDedup(GlobalStage):
    """Exact caption dedup (re-upload suffix ignored): keeps the smallest uid per caption,
    so the result does not depend on partitions or nodes."""

    name = "caption_dedup"
    adds = {"caption_key": pa.string()}

    def prepare(self, batch: pa.Table) -> pa.Table:
        key = pc.replace_substring(pc.utf8_lower(batch.column("caption")), ", re-uploaded", "")
        return set_column(batch, "caption_key", key)

    def fit(self, ds) -> None:
        rows = ds.select_columns(["uid", "caption_key"]).to_arrow_refs()
        import ray

        table = pa.concat_tables(ray.get(rows))
        keepers = table.group_by("caption_key").aggregate([("uid", "min")])
        self._keep = set(keepers.column("uid_min").to_pylist())

    def __call__(self, batch: pa.Table) -> pa.Table:
        duplicate = [uid not in self._keep for uid in batch.column("uid").to_pylist()]
        return reject_rows(batch, duplicate, self.reason("duplicate_caption"))
