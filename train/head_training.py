"""Train a head (``train/heads.py``) on labelled pairs: ``curate heads train``.

Input: a parquet file or folder of rows with either the embedding columns
``clip_score`` wrote (``clip_image_emb``, and ``clip_text_emb`` for image+text heads;
their field metadata names the model; embeddings written by other tools, without it,
are taken as ``model``'s) or ``image`` bytes (and ``caption``), which the shared
encoder embeds with ``model``; and a target: a class column (the head gives the
probability of ``positive``; every other class is negative) or a score column (the head
predicts it). A share of the rows, drawn by uid hash, is held out and reported: accuracy
and ROC AUC for classes, Pearson and Spearman correlation for scores. The report goes
into the head file's metadata as well.

The head is trained with AdamW on L2-normalised embeddings, as LAION trained its
aesthetic and NSFW heads; binary cross-entropy for classes, mean squared error for
scores. Deterministic for a given seed and row order (CPU).
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from clipcurate.pipelines.errors import InputError, UserError
from clipcurate.pipelines.stage import unit_hash
from clipcurate.train.embedding_columns import column_model, embedding_matrix, same_model
from clipcurate.train.heads import IMAGE_EMB, INPUTS, TEXT_EMB, Head, HeadNet, mlp_layers, save_head, spec_of


@dataclass
class HeadReport:
    """What training gave: the file, the rows used and the held-out figures."""

    output: str
    name: str
    task: str  # "classification" or "regression"
    model: str  # fingerprint of the CLIP model the head reads
    train_rows: int
    heldout_rows: int
    skipped_rows: int  # no embedding (image did not decode) or no target
    heldout: dict  # accuracy, auc, positive_share | pearson, spearman, rmse

    def to_dict(self) -> dict:
        return asdict(self)


def train_head(data: str | os.PathLike, *, output: str | os.PathLike, name: str, label_col: str | None = None,
               positive: str | None = None, score_col: str | None = None, model: str | None = None,
               pretrained: str | None = None, input: str = "image", hidden: tuple[int, ...] = (),
               dropout: float = 0.0, epochs: int = 200, lr: float = 1e-2, weight_decay: float = 1e-4,
               batch_size: int = 256, holdout: float = 0.2, seed: int = 0, device: str = "auto") -> HeadReport:
    """Train a head on ``data`` and write it to ``output``; returns the held-out report."""
    if (label_col is None) == (score_col is None):
        raise UserError("give exactly one target: --label-col (classes) or --score-col (scores)")
    if input not in INPUTS:
        raise UserError(f"input must be one of {', '.join(INPUTS)}, got {input!r}")
    if not 0.0 < holdout < 1.0:
        raise UserError(f"holdout must be between 0 and 1, got {holdout}")
    target_col = label_col or score_col
    table = _read(data, target_col, input)
    image, text, fingerprint, kept = _embeddings(table, data, model, pretrained, input, device)
    table = table.filter(pa.array(kept))
    if label_col is not None:
        y, positive, known = _binary_target(table.column(label_col), positive, label_col)
    else:
        values = table.column(score_col).cast(pa.float64())
        known = pc.is_valid(values).to_numpy(zero_copy_only=False) & ~np.isnan(pc.fill_null(values, 0.0).to_numpy())
        y = pc.fill_null(values, 0.0).to_numpy().astype(np.float32)
    skipped = int((~kept).sum() + (~known).sum())
    image, y = image[known], y[known]
    text = text[known] if text is not None else None
    uids = table.column("uid").to_pylist() if "uid" in table.column_names else [str(i) for i in range(table.num_rows)]
    uids = [u for u, k in zip(uids, known) if k]
    held = unit_hash(uids, "heads", seed) < holdout
    if held.sum() < 2 or (~held).sum() < 2:
        raise InputError(f"{data}: {len(uids)} usable rows: too few to hold out {holdout:.0%} and train")

    spec, spec_pretrained = spec_of(fingerprint)
    task = "classification" if label_col is not None else "regression"
    metadata = {
        "name": name, "input": input, "normalize": True,
        "model": {"spec": spec, "pretrained": spec_pretrained, "fingerprint": fingerprint,
                  "embed_dim": int(image.shape[1])},
        "output": ({"kind": "probability", "positive": positive, "column": label_col} if task == "classification"
                   else {"kind": "score", "target": score_col}),
    }
    layers = mlp_layers(image.shape[1] * (2 if input == "image+text" else 1), list(hidden), dropout=dropout)
    head = Head(HeadNet(layers), layers, metadata)
    features = head.features(image, text)
    _fit(head, features[torch.from_numpy(~held)], torch.from_numpy(y[~held]), task=task, epochs=epochs, lr=lr,
         weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    scores = head.score(features[torch.from_numpy(held)])
    figures = _figures(task, y[held], scores)
    head.metadata["training"] = {"data": str(data), "train_rows": int((~held).sum()),
                                 "heldout_rows": int(held.sum()), "heldout": figures, "seed": seed,
                                 "hidden": list(hidden), "epochs": epochs}
    save_head(head, output)
    return HeadReport(output=str(output), name=name, task=task, model=fingerprint, train_rows=int((~held).sum()),
                      heldout_rows=int(held.sum()), skipped_rows=skipped, heldout=figures)


# ------------------------------------------------------------------------- helpers


def _read(data, target_col: str, input: str) -> pa.Table:
    path = str(data)
    files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
    if not files or not all(os.path.exists(f) for f in files):
        raise InputError(f"{data}: no such parquet file or folder")
    dataset = pads.dataset(files if len(files) > 1 else files[0], format="parquet")
    names = dataset.schema.names
    if target_col not in names:
        raise InputError(f"{data}: no column '{target_col}' (columns: {', '.join(names)})")
    wanted = [c for c in ("uid", target_col, IMAGE_EMB, TEXT_EMB, "image", "caption") if c in names]
    if IMAGE_EMB in names and (input == "image" or TEXT_EMB in names):
        wanted = [c for c in wanted if c not in ("image", "caption")]  # stored embeddings: no bytes read
    return dataset.to_table(columns=wanted)


def _embeddings(table: pa.Table, data, model: str | None, pretrained: str | None, input: str, device: str):
    """(image, text or None, model fingerprint, rows that have them)."""
    needs_text = input == "image+text"
    stored = column_model(table.schema, IMAGE_EMB)
    if stored is None and IMAGE_EMB in table.column_names and model is not None:
        # embeddings written elsewhere (e.g. LAION's published .npy, converted): --model says whose they are
        from clipcurate.train.clip_model import model_fingerprint

        stored = model_fingerprint(model, pretrained)
        if needs_text and TEXT_EMB in table.column_names and column_model(table.schema, TEXT_EMB) is None:
            table = _declare(table, TEXT_EMB, stored)
        table = _declare(table, IMAGE_EMB, stored)
    if stored and (not needs_text or same_model(column_model(table.schema, TEXT_EMB), stored)):
        if model is not None:
            from clipcurate.train.clip_model import model_fingerprint

            wanted = model_fingerprint(model, pretrained)
            if not same_model(wanted, stored):
                raise InputError(f"{data}: its embeddings come from {stored}, not {wanted} (--model); "
                                 "drop --model to train on them, or give images to embed")
        kept = pc.is_valid(table.column(IMAGE_EMB)).to_numpy(zero_copy_only=False)
        if needs_text:
            kept &= pc.is_valid(table.column(TEXT_EMB)).to_numpy(zero_copy_only=False)
        rows = pa.array(np.flatnonzero(kept))
        image = embedding_matrix(table.column(IMAGE_EMB).take(rows))
        text = embedding_matrix(table.column(TEXT_EMB).take(rows)) if needs_text else None
        return image, text, stored, kept
    if "image" not in table.column_names:
        raise InputError(f"{data}: neither {IMAGE_EMB} (with its model in the field metadata, as clip_score "
                         "writes it) nor image bytes to embed")
    if model is None:
        raise UserError(f"{data} holds images, not embeddings: say which CLIP model embeds them (--model)")
    from clipcurate.train.clip_model import Encoder

    encoder = Encoder(model, pretrained, device=device)
    has_image = pc.is_valid(table.column("image")).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(has_image)
    encoded = encoder.images(table.column("image").take(pa.array(rows)).to_pylist())
    kept = np.zeros(table.num_rows, dtype=bool)
    kept[rows[encoded.decoded]] = True
    text = None
    if needs_text:
        captions = pc.fill_null(table.column("caption"), "").take(pa.array(np.flatnonzero(kept))).to_pylist()
        text = encoder.texts(captions)
    return encoded.image, text, encoder.fingerprint, kept


def _declare(table: pa.Table, column: str, fingerprint: str) -> pa.Table:
    from clipcurate.train.embedding_columns import MODEL_KEY

    fields = [f.with_metadata({MODEL_KEY: fingerprint.encode()}) if f.name == column else f for f in table.schema]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields))


def _binary_target(labels, positive: str | None, column: str) -> tuple[np.ndarray, str, np.ndarray]:
    """1.0 where the label is ``positive``; booleans and 0/1 need no ``positive``."""
    known = pc.is_valid(labels).to_numpy(zero_copy_only=False)
    values = labels.to_pylist()
    if positive is None:
        distinct = {v for v in values if v is not None}
        if distinct <= {True, False} or distinct <= {0, 1}:
            positive = "1" if distinct <= {0, 1} and not all(isinstance(v, bool) for v in distinct) else "True"
        else:
            raise UserError(f"column '{column}' has classes {sorted(map(str, distinct))[:6]}: say which one the "
                            "head detects (--positive)")
    y = np.array([str(v) == positive for v in values], dtype=np.float32)
    if not (y[known] > 0).any() or (y[known] > 0).all():
        raise InputError(f"column '{column}': every usable row is {'' if y[known].any() else 'not '}'{positive}'; "
                         "a head needs both")
    return y, positive, known


def _fit(head: Head, x: torch.Tensor, y: torch.Tensor, *, task: str, epochs: int, lr: float, weight_decay: float,
         batch_size: int, seed: int) -> None:
    torch.manual_seed(seed)
    for module in head.net.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    last = [m for m in head.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # start at the base rate / the mean: fewer epochs to a good fit
        if task == "regression":
            last.bias.fill_(float(y.mean()))
        else:
            p = float(y.mean().clamp(1e-4, 1 - 1e-4))
            last.bias.fill_(float(np.log(p / (1 - p))))
    loss_fn = torch.nn.BCEWithLogitsLoss() if task == "classification" else torch.nn.MSELoss()
    optimizer = torch.optim.AdamW(head.net.parameters(), lr=lr, weight_decay=weight_decay)
    order = torch.Generator().manual_seed(seed)
    head.net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=order).split(batch_size):
            loss = loss_fn(head.net(x[idx]).reshape(-1), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.net.eval()


def _figures(task: str, y: np.ndarray, scores: np.ndarray) -> dict:
    if task == "classification":
        from sklearn.metrics import roc_auc_score

        truth = y > 0.5
        auc = float(roc_auc_score(truth, scores)) if 0 < truth.sum() < truth.size else None
        return {"accuracy": round(float(((scores >= 0.5) == truth).mean()), 4),
                "auc": None if auc is None else round(auc, 4),
                "positive_share": round(float(truth.mean()), 4)}
    from scipy.stats import pearsonr, spearmanr

    return {"pearson": round(float(pearsonr(y, scores)[0]), 4), "spearman": round(float(spearmanr(y, scores)[0]), 4),
            "rmse": round(float(np.sqrt(np.mean((y - scores) ** 2))), 4)}
