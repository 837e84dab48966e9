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

from clipcurate.train.options import TrainConfig
from clipcurate.train.trainer import TrainResult, fit_worker


def train(data: str | Path | list, model: str | Path = "clip-tiny", *, output: str | Path,
          **options) -> TrainResult:
    """Train a CLIP/SigLIP model on parquet shards and save an open_clip checkpoint.

    ``data``: a run directory (reads its ``shards/``), a directory or glob of parquet
    files with ``image`` and ``caption``. ``model``: a bundled config (``clip-tiny``,
    ``lit-tiny``), an open_clip name (``ViT-B-32``), a JSON config or a checkpoint dir.
    ``options``: the fields of ``train.options.TrainConfig`` (the same as the ``curate
    train`` flags): give ``steps`` or ``epochs``; ``batch_size`` is per process;
    ``lock_text``: LiT; ``augment``: crops, flips, colour jitter; ``threads``: with the
    same seed and threads a CPU run is bitwise reproducible; ``ray_workers > 1``: Ray
    Train (DDP); ``quiet`` prints nothing (the log still goes to ``output/train_log.jsonl``).
    """
    data = [str(d) for d in data] if isinstance(data, (list, tuple)) else str(data)
    config = TrainConfig(data=data, output=str(output), model=str(model), **options)
    if config.quiet:
        _quiet_libraries()
    if config.ray_workers > 1:
        from clipcurate.train.distributed import fit_with_ray

        return fit_with_ray(config)
    return fit_worker(config)


def evaluate(model: str | Path, data: str | Path | None = None, *, pairs: str | Path | None = None,
             templates: list[str] | None = None, batch_size: int = 256, device: str = "auto",
             seed: int = 0, log: str | Path | None = None, class_names: str | Path | list[str] | None = None,
             label_column: str = "label") -> dict:
    """Zero-shot top-1 (top-5 over more than 5 classes) on a labeled parquet; retrieval
    recall@1/5/10 and mismatch detection (``mismatch_auc``) on held-out pairs.

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
