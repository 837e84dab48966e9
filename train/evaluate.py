"""Zero-shot classification and image<->text retrieval of a checkpoint.

Zero-shot (Radford et al. 2021, section 3.1.4): each class is the mean normalized text
embedding of its name in several prompt templates (open_clip's
``build_zero_shot_classifier``); an image is assigned the most similar class; we report
top-1 accuracy, and top-5 when there are more than 5 classes (over 5 or fewer, every
image's class is among its top 5: a score of 1.0 that measures nothing), each with its
chance level (k / classes: top-5 over 6 classes is 0.83 by guessing). Retrieval:
recall@1/5/10 image->text and text->image over held-out pairs. Identical captions are one text (templated captions repeat), so a hit is
the image's own caption text among the top k, or for a text, any of its images.

Mismatch detection (what a DFN filter model is for, Fang et al. 2023): the cosine score
of each held-out pair against the same image with another pair's caption, drawn
deterministically (``seed``) and, when the pairs have a ``label`` column, only among
pairs of another label (a caption that describes another kind of picture). We report
the ROC AUC of true vs mismatched scores (the Mann-Whitney U statistic over n_true x
n_mismatch, ties half), the score that keeps 95 % of true pairs (their 5th percentile:
a ``min_score`` for the ``clip_score`` stage) and the share of mismatches below it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from clipcurate.pipelines.errors import UserError
from clipcurate.train.clip_model import Encoder, unwrap

# A few of CLIP's ImageNet prompt templates (Radford et al. 2021, appendix) that suit any class.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.",
                     "a photo of the {}.", "a close-up photo of a {}.", "a bright photo of a {}.",
                     "a cropped photo of a {}.")
RECALL_AT = (1, 5, 10)
KEEP_TRUE = 0.95  # the mismatch threshold keeps this share of true pairs


def run_eval(model: str | Path, data: str | Path | None = None, *, pairs: str | Path | None = None,
             templates: list[str] | str | None = None, batch_size: int = 256, device: str = "auto",
             seed: int = 0, log: str | Path | None = None, class_names: str | Path | list[str] | None = None,
             label_column: str = "label") -> dict:
    """Load ``model`` and score it on ``data`` (labeled: zero-shot) and ``pairs``
    (retrieval and mismatch detection; default ``data`` when it has captions).
    ``data`` may be in any layout ``train.labels.read_labelled`` reads (integer labels
    with names, a Hugging Face ClassLabel set, ...); ``class_names`` names integer labels."""
    from clipcurate.train.labels import read_images_table, read_labelled

    started = time.perf_counter()
    if data is None and pairs is None:
        raise UserError("give labeled data (zero-shot), held-out pairs (retrieval, mismatch AUC) or both")
    labelled = read_labelled(data, class_names=class_names, label_column=label_column) if data is not None else None
    encoder = Encoder(model, device=device)
    net, tokenizer = encoder.clip.model, encoder.clip.tokenizer
    result = {"model": str(model)}
    image_features = None
    if data is not None:
        templates = resolve_templates(templates)
        labeled = labelled.table
        labels = labeled.column("label").to_pylist()
        classnames = labelled.classnames
        image_features = encode_images(encoder, labeled.column("image").to_pylist(), batch_size, data)
        result.update({"data": str(data), "images": len(labels), "classes": len(classnames),
                       "templates": len(templates)})
        result.update(zero_shot(net, tokenizer, image_features, labels, classnames, templates, encoder.device))

    pair_table = read_images_table(pairs) if pairs is not None else labeled
    if "caption" in pair_table.column_names:
        if "image" not in pair_table.column_names:
            raise UserError(f"pairs {pairs} lacks an 'image' column")
        pair_images = image_features if pairs is None else encode_images(
            encoder, pair_table.column("image").to_pylist(), batch_size, pairs)
        captions = pair_table.column("caption").to_pylist()
        texts, caption_index = np.unique(np.asarray(captions, dtype=object), return_inverse=True)
        text_features = torch.from_numpy(encoder.texts([str(t) for t in texts], batch_size))
        result["pairs"] = len(captions)
        result.update(retrieval(pair_images, text_features, caption_index))
        pair_labels = pair_table.column("label").to_pylist() if "label" in pair_table.column_names else None
        result.update(mismatch_detection(pair_images, text_features[caption_index], pair_labels, seed=seed))
    elif pairs is not None:
        raise UserError(f"pairs {pairs} lacks a 'caption' column")
    result["wall_s"] = round(time.perf_counter() - started, 3)
    if log is not None:
        with open(log, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def score_pairs(model: str | Path, table: pa.Table, *, batch_size: int = 256, device: str = "auto") -> np.ndarray:
    """The cosine score (``clip_score``) of every row of an ``image`` + ``caption``
    table; NaN where either is missing. Each distinct caption is encoded once."""
    encoder = Encoder(model, device=device)
    images, captions = table.column("image").to_pylist(), table.column("caption").to_pylist()
    scores = np.full(len(images), np.nan)
    valid = np.flatnonzero([i is not None and c is not None for i, c in zip(images, captions)])
    if not len(valid):
        return scores
    texts, caption_index = np.unique(np.asarray([captions[i] for i in valid], dtype=object), return_inverse=True)
    text_features = torch.from_numpy(encoder.texts([str(t) for t in texts], batch_size))
    image_features = encode_images(encoder, [images[i] for i in valid], batch_size, "pairs")
    scores[valid] = pair_scores(image_features, text_features[caption_index])
    return scores


def resolve_templates(templates: list[str] | str | None) -> list:
    """Format strings (``"a photo of a {}."``), a file of them (one per line),
    ``"imagenet"`` for CLIP's 80 ImageNet templates, or None for ``DEFAULT_TEMPLATES``."""
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(templates, str):
        if templates == "imagenet":
            return list(OPENAI_IMAGENET_TEMPLATES)
        path = Path(templates)
        if not path.is_file():
            raise UserError(f"templates {templates!r}: not a file and not 'imagenet'")
        templates = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [t for t in templates if isinstance(t, str) and "{}" not in t]
    if bad or not templates:
        raise UserError(f"each template needs a '{{}}' for the class name: {bad or templates}")
    return list(templates)


def encode_images(encoder: Encoder, images: list[bytes], batch_size: int, source) -> torch.Tensor:
    """Normalised image embeddings, in order; an image that does not decode is an error
    (an eval set is curated data: a silent skip would change what the score means)."""
    encoded = encoder.images(images, batch_size)
    if not encoded.decoded.all():
        raise UserError(f"{source}: {int((~encoded.decoded).sum())} of {len(images)} images do not decode "
                        f"(first at row {int(np.flatnonzero(~encoded.decoded)[0])})")
    return torch.from_numpy(encoded.image)


def zero_shot(model, tokenizer, image_features: torch.Tensor, labels: list[str], classnames: list[str],
              templates: list, device) -> dict:
    weights = build_zero_shot_classifier(unwrap(model), tokenizer, classnames, templates,
                                         device=device).float().cpu()
    logits = image_features @ weights
    target = torch.tensor([classnames.index(label) for label in labels])
    return top_k_accuracy(logits, target)


TOP_K = (1, 5)


def top_k_accuracy(logits: torch.Tensor, target: torch.Tensor) -> dict:
    """``zeroshot_top{k}``, the share of rows whose target is among their k highest
    logits, and ``chance_top{k}``, for each k of ``TOP_K`` below the number of classes
    (top-1 always)."""
    classes = logits.shape[1]
    ks = [k for k in TOP_K if k == 1 or k < classes]
    hits = logits.topk(max(ks), dim=1).indices == target[:, None]
    scores = {}
    for k in ks:
        scores[f"zeroshot_top{k}"] = round(float(hits[:, :k].any(dim=1).float().mean()), 6)
        scores[f"chance_top{k}"] = k / classes
    return scores


def retrieval(image_features: torch.Tensor, text_features: torch.Tensor, caption_index: np.ndarray) -> dict:
    """Recall@k both ways; ``text_features`` are the distinct captions, ``caption_index``
    maps each image to its caption's row."""
    similarity = image_features @ text_features.T  # [images, texts]
    caption_index = torch.from_numpy(caption_index.astype(np.int64))
    result = {}
    image_ranks = similarity.argsort(dim=1, descending=True)
    text_ranks = similarity.T.argsort(dim=1, descending=True)
    for k in RECALL_AT:
        i2t = (image_ranks[:, :k] == caption_index[:, None]).any(dim=1).float().mean()
        # text -> image: a hit when any of the text's own images is among its top k
        t2i = (caption_index[text_ranks[:, :k]] == torch.arange(len(text_features))[:, None]).any(dim=1).float().mean()
        result[f"i2t_recall@{k}"] = round(float(i2t), 6)
        result[f"t2i_recall@{k}"] = round(float(t2i), 6)
    return result


def mismatch_detection(image_features: torch.Tensor, text_features: torch.Tensor, labels: list | None = None,
                       *, seed: int = 0) -> dict:
    """Score true pairs (row i with caption i) against mismatched ones (row i with the
    caption of a partner row of another label, or any other row without labels).

    Features are normalized, one row per pair. See the module docstring for the figures.
    """
    from clipcurate.train.datasets import other_label_partners

    n = len(image_features)
    if n < 2:
        raise UserError("mismatch detection needs at least two held-out pairs")
    partners = other_label_partners(np.asarray(labels if labels is not None else np.zeros(n)),
                                    np.random.default_rng([seed, 7]))
    true_scores = pair_scores(image_features, text_features)
    mismatch_scores = pair_scores(image_features, text_features[partners])
    threshold = float(np.quantile(true_scores, 1 - KEEP_TRUE))
    return {"mismatch_auc": round(roc_auc(true_scores, mismatch_scores), 6),
            "mismatch_pairs": n,
            "min_score_keep95": round(threshold, 6),
            "mismatch_removed_at_keep95": round(float((mismatch_scores < threshold).mean()), 6)}


def pair_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> np.ndarray:
    """Cosine score of row i of ``image_features`` with row i of ``text_features``
    (both normalized): the ``clip_score`` of each pair."""
    return (image_features.float() * text_features.float()).sum(dim=1).numpy().astype(np.float64)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of scores that should rank ``positive`` above ``negative``: the
    probability that a random positive outscores a random negative, ties counting half,
    i.e. the Mann-Whitney U statistic of the positives over ``n_pos * n_neg``."""
    from scipy.stats import mannwhitneyu

    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if not len(positive) or not len(negative):
        raise ValueError("ROC AUC needs at least one positive and one negative score")
    statistic = mannwhitneyu(positive, negative, method="asymptotic").statistic
    return float(statistic / (len(positive) * len(negative)))
