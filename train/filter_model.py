"""A DFN filter model made offline from trusted pairs: the measured recipe in one call.

Data Filtering Networks (Fang et al. 2023) score a pool with a CLIP trained on
high-quality pairs and keep the best-scoring share; the filter is only as good as that
model. With no CLIP weights offline, ``bench/filter_model.py`` measured what makes a
small one good at the job, mismatch detection (``train.evaluate.mismatch_detection``),
on Fashion-MNIST product photos with web alt-text (docs/filter-model.md):

- LiT (Zhai et al. 2022): the pretrained all-MiniLM-L6-v2 text tower stays locked, so
  1,500 trusted pairs only have to teach the image tower and a projection; the tower
  already knows that "trainers" and "running shoes" are sneakers;
- a small ResNet image tower (``lit-resnet-tiny``: open_clip's ModifiedResNet, 1.8 M
  parameters): on a few thousand images a convnet learns more than ``lit-tiny``'s ViT;
- image augmentation (``augment``: crops, flips, colour jitter), against overfitting a
  small trusted set; past ~300 steps more steps overfit it;
- one round of self-training when a pool sample is given: the first model scores it,
  the best-scoring half joins the trusted pairs and a fresh model trains on both
  (pseudo-labelling, as in noisy-student training, Xie et al. 2020).

Use the result as the ``clip_score`` stage's model: ``local-dir:OUTPUT``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.pipelines.errors import UserError
from clipcurate.train import checkpoint
from clipcurate.train.api import train
from clipcurate.train.data import shard_files
from clipcurate.train.evaluate import score_pairs
from clipcurate.train.trainer import torch_threads

# The measured recipe (bench/filter_model.py), the defaults of train_filter_model and the CLI.
DEFAULTS = {"model": "lit-resnet-tiny", "steps": 300, "self_train_steps": 800, "self_train_top": 0.5,
            "batch_size": 64, "lr": 1e-3, "pool_rows": 20_000}
ROUND_ONE = "trusted-only"  # the first model, inside OUTPUT, when self-training
SELECTED = "self-train"  # the pool rows added for the second round: SELECTED/shards/*.parquet


@dataclass
class FilterModelResult:
    output: Path  # the filter model: an open_clip local-dir checkpoint
    steps: int  # optimizer steps over all rounds
    train_s: float  # wall seconds, scoring the pool included
    pool_scored: int  # pool rows scored for self-training (0 without a pool)
    pool_added: int  # of which added to the training set


def train_filter_model(trusted: str | Path | list, *, output: str | Path, pool: str | Path | list | None = None,
                       model: str | Path = DEFAULTS["model"], lock_text: bool = True, augment: bool = True,
                       steps: int = DEFAULTS["steps"], self_train_steps: int | None = DEFAULTS["self_train_steps"],
                       self_train_top: float = DEFAULTS["self_train_top"],
                       pool_rows: int | None = DEFAULTS["pool_rows"],
                       batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"], seed: int = 0,
                       threads: int | None = None, quiet: bool = True) -> FilterModelResult:
    """Train a filter model on ``trusted`` pairs (a run dir, shards dir, glob or parquet
    files with ``image`` and ``caption``) and write it to ``output``.

    With a ``pool`` (same formats; its first ``pool_rows`` rows), the first round's model
    (kept in ``output/trusted-only``) scores the pool, its top ``self_train_top`` share is
    written to ``output/self-train/shards``, and a fresh model trains on trusted +
    selected pairs for ``self_train_steps`` (None: ``steps``) into ``output``. ``model``,
    ``lock_text``, ``augment``, ``lr``, ``batch_size``, ``seed`` and ``threads`` are
    ``train.api.train``'s; ``threads`` (CPU) makes the result bitwise reproducible.
    """
    started = time.perf_counter()
    output = Path(output)
    if not 0 < self_train_top < 1:
        raise UserError(f"self_train_top {self_train_top} must be between 0 and 1")
    if checkpoint.exists(output) or checkpoint.exists(output / ROUND_ONE):
        raise UserError(f"{output} already holds a filter model: choose a new output directory")
    common = dict(model=model, lock_text=lock_text, augment=augment, batch_size=batch_size, lr=lr, seed=seed,
                  quiet=quiet)
    with torch_threads(threads):
        if pool is None:
            result = train(trusted, output=output, steps=steps, **common)
            return FilterModelResult(output, result.step, time.perf_counter() - started, 0, 0)
        first = train(trusted, output=output / ROUND_ONE, steps=steps, **common)
        scored, selected = select_pool_pairs(first.output, pool, output / SELECTED, top=self_train_top,
                                             max_rows=pool_rows)
        data = shard_files(trusted) + shard_files(output / SELECTED)
        second = train(data, output=output, steps=self_train_steps or steps, **common)
    return FilterModelResult(output, first.step + second.step, time.perf_counter() - started, scored, selected)


def select_pool_pairs(model: str | Path, pool: str | Path | list, directory: str | Path, *, top: float,
                      max_rows: int | None = None) -> tuple[int, int]:
    """Score the first ``max_rows`` rows of ``pool`` with ``model`` and write the
    ``top`` share by score (ties: pool order) as ``directory/shards/part-00000.parquet``.
    Returns (rows scored, rows written)."""
    table = read_pairs(pool, max_rows)
    scores = score_pairs(model, table)
    valid = np.flatnonzero(~np.isnan(scores))
    keep = int(round(top * len(valid)))
    order = valid[np.argsort(-scores[valid], kind="stable")][:keep]
    shards = Path(directory) / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.take(np.sort(order)), shards / "part-00000.parquet")
    return len(valid), keep


def read_pairs(data: str | Path | list, max_rows: int | None = None) -> pa.Table:
    """``image`` and ``caption`` of the first ``max_rows`` rows of ``data`` (shard order)."""
    tables, rows = [], 0
    for path in shard_files(data):
        table = pq.read_table(path, columns=["image", "caption"])
        if max_rows is not None:
            table = table.slice(0, max_rows - rows)
        tables.append(table)
        rows += len(table)
        if max_rows is not None and rows >= max_rows:
            break
    return pa.concat_tables(tables)
