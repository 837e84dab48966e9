"""Data-parallel training under Ray Train (2 CPU workers, gloo DDP).

Starting Ray and two train workers takes about a minute on a loaded 2-core machine,
so this runs only with ``CLIPCURATE_SLOW_TESTS=1``.
"""

from __future__ import annotations

import os

import open_clip
import pytest
import torch

from clipcurate.train import checkpoint
from clipcurate.train.api import train


@pytest.mark.skipif(not os.environ.get("CLIPCURATE_SLOW_TESTS"), reason="set CLIPCURATE_SLOW_TESTS=1 (Ray Train start-up)")
def test_two_ray_workers_train_one_model_on_disjoint_data(ray_local, shapes_run, micro_config, tmp_path):
    result = train(shapes_run / "run", micro_config, output=tmp_path / "ddp", steps=3, batch_size=16,
                   ray_workers=2, quiet=True)
    assert result.step == 3
    state = checkpoint.load(result.output)
    assert state.layout == {"world_size": 2, "workers_per_rank": 1}
    assert state.positions == {0: 48, 1: 48}  # each rank read its own 3 x 16 rows
    model = open_clip.create_model("local-dir:" + str(result.output))
    saved = torch.load(result.output / "open_clip_pytorch_model.bin", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
