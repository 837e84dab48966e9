"""The Python API: ``train(...)`` a model on a run's shards, ``evaluate(...)`` a checkpoint.

    from clipcurate.train.api import train, evaluate
    result = train("out/", model="clip-tiny", steps=200, batch_size=64, output="ckpt/", quiet=True)
    scores = evaluate("ckpt/", "labeled.parquet")   # {"zeroshot_top1": ..., ...}
    scores = evaluate("ckpt/", pairs="heldout.parquet")   # {"mismatch_auc": ..., "i2t_recall@1": ...}

The checkpoint directory loads in plain open_clip:
``open_clip.create_model_and_transforms("local-dir:ckpt/")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from clipcurate.train.trainer import TrainConfig, TrainResult, fit


def train(data: str | Path | list, model: str | Path = "clip-tiny", *, output: str | Path,
          steps: int | None = None, epochs: float | None = None, batch_size: int = 64,
          loss: Literal["clip", "siglip"] = "clip", lr: float = 5e-4, warmup: int | None = None,
          wd: float = 0.1, grad_clip: float | None = 1.0,
          precision: Literal["auto", "fp32", "amp_bf16", "amp_fp16"] = "auto", accum: int = 1,
          lock_text: bool = False, augment: bool = False, threads: int | None = None,
          pretrained: str | None = None, workers: int = 0,
          shuffle_buffer: int = 1000, seed: int = 0, device: str = "auto",
          save_every: int | None = None, stop_after: int | None = None, resume: bool = False,
          log_every: int = 10, ray_workers: int = 1, use_gpu: bool = False,
          quiet: bool = False) -> TrainResult:
    """Train a CLIP/SigLIP model on parquet shards and save an open_clip checkpoint.

    ``data``: a run directory (reads its ``shards/``), a directory or glob of parquet
    files with ``image`` and ``caption``. ``model``: a bundled config (``clip-tiny``,
    ``lit-tiny``), an open_clip name (``ViT-B-32``), a JSON config or a checkpoint dir.
    Give ``steps`` or ``epochs``. ``batch_size`` is per process. ``lock_text``: LiT (a
    pretrained text tower, e.g. ``lit-tiny``'s MiniLM, stays fixed). ``augment``: random
    crops, flips and colour jitter on the training images. ``threads``: torch CPU threads
    for the run; with the same seed and threads a CPU run is bitwise reproducible.
    ``quiet`` prints nothing (the log still goes to ``output/train_log.jsonl``).
    """
    config = TrainConfig(
        data=[str(d) for d in data] if isinstance(data, (list, tuple)) else str(data),
        output=str(output), model=str(model), steps=steps, epochs=epochs, batch_size=batch_size,
        loss=loss, lr=lr, warmup=warmup, wd=wd, grad_clip=grad_clip, precision=precision, accum=accum,
        lock_text=lock_text, augment=augment, threads=threads, pretrained=pretrained, workers=workers,
        shuffle_buffer=shuffle_buffer,
        seed=seed, device=device, save_every=save_every, stop_after=stop_after, resume=resume,
        log_every=log_every, ray_workers=ray_workers, use_gpu=use_gpu, quiet=quiet)
    if quiet:
        _quiet_libraries()
    return fit(config)


def evaluate(model: str | Path, data: str | Path | None = None, *, pairs: str | Path | None = None,
             templates: list[str] | None = None, batch_size: int = 256, device: str = "auto",
             seed: int = 0, log: str | Path | None = None, class_names: str | Path | list[str] | None = None,
             label_column: str = "label") -> dict:
    """Zero-shot top-1/top-5 on a labeled parquet; retrieval recall@1/5/10 and
    mismatch detection (``mismatch_auc``) on held-out pairs.

    ``data`` has ``image`` and ``label`` (and optionally ``caption``); ``pairs`` is a
    parquet of held-out ``image`` + ``caption`` (+ optional ``label``; default:
    ``data``'s captions if any). Give either or both. ``mismatch_auc`` is the ROC AUC
    of each pair's cosine score against the same image with another pair's caption
    (of another label when labels exist; drawn with ``seed``): how well the model
    serves as a DFN filter. ``min_score_keep95`` is the score that keeps 95 % of true
    pairs and ``mismatch_removed_at_keep95`` the share of mismatches it removes.
    ``templates`` are format strings such as ``"a photo of a {}."``.
    Labels may be class names, or integers named by a class-name column (``class_name``),
    a ``class_names`` file (one per line, in label order) or a Hugging Face ``ClassLabel``
    (``train/labels.py``); integer labels without names are refused.
    """
    from clipcurate.train.evaluate import run_eval

    return run_eval(model, data, pairs=pairs, templates=templates, batch_size=batch_size,
                    device=device, seed=seed, log=log, class_names=class_names, label_column=label_column)


def _quiet_libraries() -> None:
    """Silence progress bars and info logs of the libraries a run loads."""
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers comes with open_clip's HF towers
        pass
