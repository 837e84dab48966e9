"""Zero-shot classification and image<->text retrieval of a checkpoint.

Zero-shot (Radford et al. 2021, section 3.1.4): each class is the mean normalized text
embedding of its name in several prompt templates (open_clip's
``build_zero_shot_classifier``); an image is assigned the most similar class; we report
top-1 and top-5 accuracy. Retrieval: recall@1/5/10 image->text and text->image over
held-out pairs. Identical captions are one text (templated captions repeat), so a hit is
the image's own caption text among the top k, or for a text, any of its images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from pipelines.errors import UserError
from train.data import decode_image
from train.model import CONFIG_FILE, create, unwrap

# A few of CLIP's ImageNet prompt templates (Radford et al. 2021, appendix) that suit any class.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.",
                     "a photo of the {}.", "a close-up photo of a {}.", "a bright photo of a {}.",
                     "a cropped photo of a {}.")
RECALL_AT = (1, 5, 10)


def run_eval(model: str | Path, data: str | Path, *, pairs: str | Path | None = None,
             templates: list[str] | str | None = None, batch_size: int = 256, device: str = "auto",
             log: str | Path | None = None) -> dict:
    """Load ``model`` and score it on ``data`` (labeled) and ``pairs`` (retrieval)."""
    started = time.perf_counter()
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    net, preprocess, tokenizer = load_for_eval(model, device)
    templates = resolve_templates(templates)
    labeled = pq.read_table(data)
    for column in ("image", "label"):
        if column not in labeled.column_names:
            raise UserError(f"labeled data {data} lacks column {column!r} (needs image, label)")
    labels = labeled.column("label").to_pylist()
    classnames = sorted(set(labels))
    image_features = encode_images(net, preprocess, labeled.column("image").to_pylist(), batch_size, device)
    result = {"model": str(model), "data": str(data), "images": len(labels), "classes": len(classnames),
              "chance_top1": 1.0 / len(classnames), "templates": len(templates)}
    result.update(zero_shot(net, tokenizer, image_features, labels, classnames, templates, device))

    pair_table = pq.read_table(pairs) if pairs is not None else labeled
    if "caption" in pair_table.column_names:
        same = pairs is None
        pair_images = image_features if same else encode_images(
            net, preprocess, pair_table.column("image").to_pylist(), batch_size, device)
        captions = pair_table.column("caption").to_pylist()
        result.update(retrieval(net, tokenizer, pair_images, captions, batch_size, device))
        result["pairs"] = len(captions)
    elif pairs is not None:
        raise UserError(f"pairs {pairs} lacks a 'caption' column")
    result["wall_s"] = round(time.perf_counter() - started, 3)
    if log is not None:
        with open(log, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def load_for_eval(model: str | Path, device: torch.device):
    """A checkpoint dir loads through plain open_clip (``local-dir:``), anything else
    through ``train.model.create`` (bundled configs, open_clip names)."""
    path = Path(str(model).removeprefix("local-dir:"))
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        net, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(path), device=device)
        tokenizer = open_clip.get_tokenizer("local-dir:" + str(path))
    else:
        bundle = create(model, device=device)
        net, preprocess, tokenizer = bundle.model, bundle.preprocess_val, bundle.tokenizer
    net.eval()
    return net, preprocess, tokenizer


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


@torch.no_grad()
def encode_images(model, preprocess, images: list[bytes], batch_size: int, device) -> torch.Tensor:
    """Normalized image embeddings, in order."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = torch.stack([preprocess(decode_image(b)) for b in chunk]).to(device)
        out.append(unwrap(model).encode_image(pixels, normalize=True).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int, device) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size]).to(device)
        out.append(unwrap(model).encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(out)


def zero_shot(model, tokenizer, image_features: torch.Tensor, labels: list[str], classnames: list[str],
              templates: list, device) -> dict:
    weights = build_zero_shot_classifier(unwrap(model), tokenizer, classnames, templates,
                                         device=device).float().cpu()
    logits = image_features @ weights
    target = torch.tensor([classnames.index(label) for label in labels])
    k = min(5, len(classnames))
    top = logits.topk(k, dim=1).indices
    hits = top == target[:, None]
    return {"zeroshot_top1": round(float(hits[:, 0].float().mean()), 6),
            "zeroshot_top5": round(float(hits.any(dim=1).float().mean()), 6)}


def retrieval(model, tokenizer, image_features: torch.Tensor, captions: list[str], batch_size: int,
              device) -> dict:
    texts, caption_index = np.unique(np.asarray(captions, dtype=object), return_inverse=True)
    text_features = encode_texts(model, tokenizer, [str(t) for t in texts], batch_size, device)
    similarity = image_features @ text_features.T  # [images, texts]
    caption_index = torch.from_numpy(caption_index.astype(np.int64))
    result = {}
    image_ranks = similarity.argsort(dim=1, descending=True)
    text_ranks = similarity.T.argsort(dim=1, descending=True)
    for k in RECALL_AT:
        i2t = (image_ranks[:, :k] == caption_index[:, None]).any(dim=1).float().mean()
        # text -> image: a hit when any of the text's own images is among its top k
        t2i = (caption_index[text_ranks[:, :k]] == torch.arange(len(texts))[:, None]).any(dim=1).float().mean()
        result[f"i2t_recall@{k}"] = round(float(i2t), 6)
        result[f"t2i_recall@{k}"] = round(float(t2i), 6)
    return result
