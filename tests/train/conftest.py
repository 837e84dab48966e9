"""Fixtures for the trainer tests: small real shards and a micro model config.

Torch runs single-threaded here: on a shared 2-core machine, two OpenMP threads per
process under load are many times slower than one (spinning barriers).
"""

from __future__ import annotations

import json

import pytest
import torch

from clipcurate.train import datasets

MICRO_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory):
    """A run directory whose ``shards/`` hold 640 coloured-shape pairs in 3 shards with
    several row groups each, plus a held-out labeled parquet of 240 new shapes."""
    root = tmp_path_factory.mktemp("shapes")
    images, _, captions = datasets.shapes(640, seed=0)
    datasets.write_shards(root / "run", images, captions, rows_per_shard=256, row_group_size=64)
    held_images, held_labels, held_captions = datasets.shapes(240, seed=1)
    datasets.write_labeled(root / "heldout.parquet", held_images, held_labels, held_captions)
    return root


@pytest.fixture(scope="session")
def micro_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "clip-micro.json"
    path.write_text(json.dumps(MICRO_CONFIG))
    return path
