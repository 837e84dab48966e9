"""Data-parallel training with Ray Train: the same loop in N processes, DDP between them.

Ray Train's ``TorchTrainer`` starts one worker per GPU (or CPU slot), on this machine
or across a Ray cluster (``RAY_ADDRESS``), and sets up ``torch.distributed``; each
rank reads its own slice of the shards (``train.data``), open_clip's losses gather
features across ranks, and rank 0 writes the checkpoint into ``output`` (which must be
on storage every node can reach when several nodes train: a shared folder or an object
store, ``s3://bucket/ckpt``, which rank 0 publishes to as it saves).
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from clipcurate.pipelines.storage import Storage, is_uri
from clipcurate.train.checkpoint import STATE_JSON
from clipcurate.train.options import TrainConfig
from clipcurate.train.trainer import TrainResult, fit_worker


def fit_with_ray(config: TrainConfig) -> TrainResult:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    output = Storage.at(config.output)  # a folder, or an object store rank 0 publishes to
    parent, name = posixpath.split(output.root.rstrip("/"))
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"config": config.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=config.ray_workers, use_gpu=config.use_gpu),
        run_config=RunConfig(name="train", storage_path=posixpath.join(parent, f".{name}.ray"),
                             storage_filesystem=output.fs),
    )
    trainer.fit()
    state = output.read_json(output.path(STATE_JSON))  # rank 0's final summary
    return TrainResult(output=config.output if is_uri(config.output) else Path(config.output),
                       step=state["step"], loss=state["loss"],
                       samples_per_s=state["samples_per_s"], wall_s=state["wall_s"])


def _train_loop(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    config = TrainConfig(**loop_config["config"])
    context = ray.train.get_context()

    def gather(positions: dict[int, int]) -> dict[int, int]:
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, positions)
        return {k: v for part in everyone for k, v in part.items()}

    fit_worker(config, rank=context.get_world_rank(), world_size=context.get_world_size(),
                        device=ray.train.torch.get_device(), wrap=ray.train.torch.prepare_model,
                        gather=gather)
