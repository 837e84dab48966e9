"""clip_heads and `curate heads train`: a head trained on a labelled set separates it on
held-out rows, the stage reuses stored embeddings (no forward) or embeds images itself
(the same scores), refuses heads of another model, and LAION's published aesthetic
state dict loads and scores like LAION's own MLP.

The CLIP model is the bundled ``clip-tiny`` config with seeded random weights saved to a
file: random ViT features still tell a picture with a stamped text watermark from a
clean one well enough for a linear head.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw

from clipcurate.filters.heads import ClipHeads
from clipcurate.pipelines.cli import main as curate
from clipcurate.pipelines.errors import RecipeError
from clipcurate.pipelines.recipe import parse_recipe
from clipcurate.train.clip_model import Encoder, load_clip, model_fingerprint
from clipcurate.train.embedding_columns import MODEL_KEY
from clipcurate.train.heads import load_head

N_LABELLED = 400


def photo(seed: int, size: int = 64) -> Image.Image:
    """A smooth random picture (6x6 noise upsampled)."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


def watermarked(image: Image.Image, seed: int) -> Image.Image:
    """Rows of semi-transparent white text over the picture, as stock sites stamp them."""
    rng = np.random.default_rng(seed + 7)
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    pen = ImageDraw.Draw(overlay)
    for y in range(0, image.size[1], 12):
        pen.text((int(rng.integers(-8, 4)), y), "(c) STOCK PHOTO", fill=(255, 255, 255, 170))
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def embedding_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.astype(np.float16).reshape(-1), pa.float16()),
                                             matrix.shape[1])


def with_model(table: pa.Table, fingerprint: str, columns=("clip_image_emb",)) -> pa.Table:
    """Mark embedding columns with the model that made them, as clip_score does."""
    fields = [f.with_metadata({MODEL_KEY: fingerprint.encode()}) if f.name in columns else f for f in table.schema]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model spec, pretrained weights file) of a seeded random clip-tiny."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    weights = root / "tiny.bin"
    torch.save(load_clip("clip-tiny").model.state_dict(), weights)
    return "clip-tiny", str(weights)


@pytest.fixture(scope="module")
def labelled(tiny, tmp_path_factory):
    """Watermarked (label "watermark") and clean ("clean") pictures, their image bytes and
    the clip-tiny embeddings clip_score would have stored."""
    labels = np.where(np.arange(N_LABELLED) % 2 == 1, "watermark", "clean")
    images = [png(watermarked(photo(i), i) if label == "watermark" else photo(i)) for i, label in enumerate(labels)]
    encoder = Encoder(*tiny, device="cpu")
    encoded = encoder.images(images)
    assert encoded.decoded.all()
    table = pa.table({"uid": [f"u{i:04d}" for i in range(N_LABELLED)], "label": labels.tolist(),
                      "image": pa.array(images, pa.binary()), "clip_image_emb": embedding_column(encoded.image)})
    table = with_model(table, encoder.fingerprint)
    path = tmp_path_factory.mktemp("labelled") / "labelled.parquet"
    pq.write_table(table, path)
    return path, table, encoder.fingerprint


@pytest.fixture(scope="module")
def head_file(labelled, tmp_path_factory):
    """A watermark head trained by `curate heads train` on the stored embeddings."""
    path, _, _ = labelled
    out = tmp_path_factory.mktemp("head") / "watermark.head.pt"
    assert curate(["heads", "train", "--data", str(path), "--label-col", "label", "--positive", "watermark",
                   "--name", "watermark", "--output", str(out)]) == 0
    return out


def test_trained_head_separates_watermarks_on_heldout_rows(head_file, labelled, capsys):
    head = load_head(head_file)
    figures = head.metadata["training"]["heldout"]
    # held out: 100 of 400 rows by uid hash; measured accuracy 0.89, AUC 0.95 (linear head, defaults)
    assert head.metadata["training"]["heldout_rows"] >= 60
    assert figures["accuracy"] >= 0.85 and figures["auc"] >= 0.9, figures
    assert head.metadata["model"]["fingerprint"] == labelled[2]
    assert head.metadata["output"] == {"kind": "probability", "positive": "watermark", "column": "label"}
    assert curate(["heads", "show", str(head_file)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "watermark" and shown["layers"] == ["linear:128:1"]


def test_stage_reuses_stored_embeddings_without_a_forward_pass(head_file, labelled):
    """Rows with stored embeddings and *no image bytes* are scored, not rejected as missing
    images: the stage read the embeddings clip_score stored and never ran the model."""
    _, table, _ = labelled
    pool = table.drop_columns(["label"])
    pool = pool.set_column(pool.schema.get_field_index("image"), "image", pa.nulls(pool.num_rows, pa.binary()))
    pool = pool.append_column("reject", pa.nulls(pool.num_rows, pa.string()))
    stage = ClipHeads(heads=[{"name": "watermark", "path": str(head_file), "max_score": 0.5}])
    out = stage(pool)
    scores = out.column("watermark_score").to_numpy()
    head = load_head(head_file)
    stored = np.stack(table.column("clip_image_emb").to_numpy(zero_copy_only=False)).astype(np.float32)
    weight, bias = head.net.layers[0].weight.detach().numpy(), head.net.layers[0].bias.detach().numpy()
    normalised = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    reference = 1 / (1 + np.exp(-(normalised @ weight.T + bias).ravel()))
    np.testing.assert_allclose(scores, reference, atol=1e-5)
    rejects = out.column("reject").to_pylist()
    assert "clip_heads:missing_image" not in rejects
    labels = np.array(table.column("label").to_pylist())
    flagged = np.array([r == "clip_heads:watermark_too_high" for r in rejects])
    assert flagged[labels == "watermark"].mean() > 0.8 and flagged[labels == "clean"].mean() < 0.2
    assert out.schema.field("watermark_score").metadata  # the head's digest: a rerun reuses the scores


def test_stage_embeds_images_itself_when_embeddings_are_missing_or_from_another_model(head_file, labelled, tiny):
    _, table, _ = labelled
    pool = table.slice(0, 48).drop_columns(["label"])
    stored = ClipHeads(heads=[{"name": "watermark", "path": str(head_file)}])(pool)
    own = ClipHeads(heads=[{"name": "watermark", "path": str(head_file)}])(pool.drop_columns(["clip_image_emb"]))
    # embeddings from another model (a hub name) are not used: the stage embeds the images itself
    other = with_model(pool, model_fingerprint("ViT-B-32", "openai"))
    recomputed = ClipHeads(heads=[{"name": "watermark", "path": str(head_file)}])(other)
    for result in (own, recomputed):
        # stored embeddings are float16: scores agree to the float16 rounding
        np.testing.assert_allclose(result.column("watermark_score").to_numpy(),
                                   stored.column("watermark_score").to_numpy(), atol=2e-3)


def test_head_of_another_model_is_refused_in_one_line(head_file, tmp_path):
    raw = {"name": "t", "stages": [{"clip_heads": {"model": "ViT-B-32", "pretrained": "openai",
                                                   "heads": [{"name": "watermark", "path": str(head_file)}]}}]}
    with pytest.raises(RecipeError) as err:
        parse_recipe(raw)
    message = str(err.value)
    assert "\n" not in message and message.startswith("recipe: stages[0].clip_heads.heads:")
    assert "head 'watermark'" in message and "clip-tiny" in message and "ViT-B-32 (openai)" in message

    aesthetic = tmp_path / "aesthetic.pth"
    torch.save(LaionAestheticMLP(768).state_dict(), aesthetic)
    mixed = {"name": "t", "stages": [{"clip_heads": {"heads": [
        {"name": "watermark", "path": str(head_file)},
        {"name": "aesthetic", "path": str(aesthetic), "format": "laion_aesthetic"}]}}]}
    with pytest.raises(RecipeError, match=r"head 'aesthetic' .* ViT-L-14 \(openai\), head 'watermark' is clip-tiny"):
        parse_recipe(mixed)


class LaionAestheticMLP(torch.nn.Module):
    """The improved aesthetic predictor's network, as its repository defines it
    (christophschuhmann/improved-aesthetic-predictor, ``MLP``): no activations."""

    def __init__(self, input_size: int):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


def test_laion_aesthetic_state_dict_loads_and_scores(tmp_path, ray_local):
    torch.manual_seed(1)
    reference = LaionAestheticMLP(768).eval()
    with torch.no_grad():
        reference.layers[-1].bias.fill_(5.0)  # centre the ratings near LAION's mean
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(reference.state_dict(), path)
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(64, 768)).astype(np.float32) * rng.uniform(0.5, 3, (64, 1)).astype(np.float32)
    table = pa.table({"uid": [f"a{i}" for i in range(64)], "image": pa.nulls(64, pa.binary()),
                      "clip_image_emb": embedding_column(embeddings), "reject": pa.nulls(64, pa.string())})
    table = with_model(table, model_fingerprint("ViT-L-14", "openai"))
    stage = ClipHeads(heads=[{"name": "aesthetic", "path": str(path), "format": "laion_aesthetic",
                              "keep_top": 0.25}])
    assert stage.is_global
    import ray.data

    prepared = stage.prepare(table)
    stage.fit(ray.data.from_arrow(prepared))
    out = stage(prepared)
    # LAION's usage: the MLP on the L2-normalised ViT-L/14 image embedding
    stored = embeddings.astype(np.float16).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.nn.functional.normalize(torch.from_numpy(stored), dim=-1)).numpy().ravel()
    scores = out.column("aesthetic_score").to_numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    kept = out.column("reject").is_null().to_numpy(zero_copy_only=False)
    assert kept.sum() == 16 and scores[kept].min() >= scores[~kept].max()
    assert set(out.column("reject").drop_null().to_pylist()) == {"clip_heads:aesthetic_too_low"}
    (summary,) = stage.summary()["heads"]
    assert summary["keep_top"] == 0.25 and summary["min_score"] == pytest.approx(float(np.sort(scores)[-16]))


class Payload:
    """A pickled object in a head file: unpickling it could run code from the file."""


def test_head_files_load_weights_only(tmp_path):
    path = tmp_path / "evil.head.pt"
    torch.save({"format": "clipcurate.head/1", "layers": ["linear:4:1"], "metadata": Payload(),
                "state_dict": {}}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_head(path)


def test_score_head_on_embeddings_from_elsewhere(tmp_path, capsys):
    """A regression head (``--score-col``) on embeddings another tool wrote (no model in the
    field metadata: ``--model`` says whose they are), e.g. LAION's published .npy files."""
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(600, 64)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    direction = rng.normal(size=64)
    rating = 5.0 + 4.0 * embeddings @ (direction / np.linalg.norm(direction)) + rng.normal(0, 0.1, 600)
    path = tmp_path / "rated.parquet"
    pq.write_table(pa.table({"uid": [f"r{i}" for i in range(600)], "rating": rating,
                             "clip_image_emb": embedding_column(embeddings)}), path)
    out = tmp_path / "rating.head.pt"
    assert curate(["heads", "train", "--data", str(path), "--score-col", "rating", "--name", "rating",
                   "--output", str(out), "--model", "ViT-B-32", "--pretrained", "openai"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["task"] == "regression" and report["heldout"]["pearson"] > 0.9, report
    head = load_head(out)
    assert head.output == {"kind": "score", "target": "rating"}
    assert head.metadata["model"]["fingerprint"] == model_fingerprint("ViT-B-32", "openai")


def test_image_text_head_reads_both_embeddings(tmp_path):
    """``--input image+text``: the head reads the normalised image and caption embeddings
    concatenated; the label here depends on the caption embedding only."""
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(500, 32)), rng.normal(size=(500, 32))
    labels = text[:, 0] > 0
    fingerprint = model_fingerprint("ViT-B-32", "openai")
    table = pa.table({"uid": [f"t{i}" for i in range(500)], "label": labels, "image": pa.nulls(500, pa.binary()),
                      "clip_image_emb": embedding_column(image), "clip_text_emb": embedding_column(text)})
    table = with_model(table, fingerprint, columns=("clip_image_emb", "clip_text_emb"))
    path, out = tmp_path / "pairs.parquet", tmp_path / "pair.head.pt"
    pq.write_table(table, path)
    assert curate(["heads", "train", "--data", str(path), "--label-col", "label", "--name", "pair",
                   "--input", "image+text", "--output", str(out)]) == 0
    head = load_head(out)
    assert head.input == "image+text" and head.in_dim == 64 and head.metadata["training"]["heldout"]["accuracy"] > 0.75
    scored = ClipHeads(heads=[{"name": "pair", "path": str(out)}])(table.drop_columns(["label"]))
    stored = [np.stack(table.column(c).to_numpy(zero_copy_only=False)).astype(np.float32)
              for c in ("clip_image_emb", "clip_text_emb")]
    features = np.concatenate([m / np.linalg.norm(m, axis=1, keepdims=True) for m in stored], axis=1)
    weight, bias = head.net.layers[0].weight.detach().numpy(), head.net.layers[0].bias.detach().numpy()
    np.testing.assert_allclose(scored.column("pair_score").to_numpy(),
                               1 / (1 + np.exp(-(features @ weight.T + bias).ravel())), atol=1e-5)
