"""clip_score: equal to plain open_clip, thresholds, decode errors, the DFN loop.

The model is a tiny open_clip CLIP described by a JSON config (32 px ViT, small text
tower), trained for a few steps with open_clip's ClipLoss on synthetic "a photo of a
<color> <shape>" pairs and saved in the checkpoint contract format: a miniature of the
DFN loop (train a filter model on trusted pairs, then score a pool with it).
"""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydantic
import pytest
import ray
import torch
from open_clip.loss import ClipLoss
from PIL import Image, ImageDraw

from clipcurate.train.clip_model import load_clip, save_checkpoint
from clipcurate.filters.clip_score import ClipScore
from clipcurate.pipelines.stage import GlobalStage

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "circle", "triangle")
KINDS = [(c, s) for c in COLORS for s in SHAPES]


def draw(color: str, shape: str, seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(90, 160, 3)))
    x, y = (int(v) for v in rng.integers(2, size // 4, 2))
    side = int(rng.integers(size // 2, size * 3 // 4))
    box = [x, y, x + side, y + side]
    pen = ImageDraw.Draw(image)
    if shape == "square":
        pen.rectangle(box, fill=COLORS[color])
    elif shape == "circle":
        pen.ellipse(box, fill=COLORS[color])
    else:
        pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLORS[color])
    return image


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92)
    return out.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny CLIP trained on matched pairs, saved in the contract format."""
    root = tmp_path_factory.mktemp("tiny_clip")
    config_path = root / "tiny_clip.json"
    config_path.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        open_clip.add_model_config(config_path)
        model, _, preprocess = open_clip.create_model_and_transforms("tiny_clip")
        tokenizer = open_clip.get_tokenizer("tiny_clip")
        kinds = [KINDS[i % len(KINDS)] for i in range(192)]
        images = torch.stack([preprocess(draw(c, s, i)) for i, (c, s) in enumerate(kinds)])
        tokens = tokenizer([f"a photo of a {c} {s}" for c, s in kinds])
        loss_fn = ClipLoss()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
        order = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(60):
            idx = torch.randperm(len(images), generator=order)[:48]
            image_features, text_features, logit_scale = model(images[idx], tokens[idx])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    path = save_checkpoint(model, root / "ckpt", model_cfg=TINY_CLIP)
    torch.save(model.state_dict(), root / "weights.bin")
    return path


def pool(n: int = 24, *, mismatch_every: int = 0, seed: int = 1000) -> tuple[pa.Table, np.ndarray]:
    """A pool of JPEG pairs; every `mismatch_every`-th caption names another kind."""
    rows, mismatched = [], []
    for i in range(n):
        color, shape = KINDS[i % len(KINDS)]
        wrong = mismatch_every and i % mismatch_every == 0
        if wrong:
            color, shape = KINDS[(i + 5) % len(KINDS)][0], KINDS[(i + 7) % len(KINDS)][1]
        mismatched.append(bool(wrong))
        image = draw(*KINDS[i % len(KINDS)], seed=seed + i, size=48 + (i % 3) * 16)
        rows.append({"uid": f"u{i:03d}", "caption": f"a photo of a {color} {shape}", "image": jpeg(image),
                     "width": image.width, "height": image.height})
    table = pa.table(
        {
            "uid": pa.array([r["uid"] for r in rows], pa.string()),
            "caption": pa.array([r["caption"] for r in rows], pa.string()),
            "image": pa.array([r["image"] for r in rows], pa.binary()),
            "width": pa.array([r["width"] for r in rows], pa.int32()),
            "height": pa.array([r["height"] for r in rows], pa.int32()),
            "reject": pa.nulls(n, pa.string()),
        }
    )
    return table, np.array(mismatched)


def plain_open_clip_scores(path, table: pa.Table) -> np.ndarray:
    """The reference: plain open_clip on the same images and captions."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
    model.eval()
    images = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in table.column("image").to_pylist()])
    with torch.no_grad():
        image = model.encode_image(images)
        text = model.encode_text(tokenizer(table.column("caption").to_pylist()))
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return (image * text).sum(dim=-1).numpy()


def test_scores_equal_plain_open_clip(checkpoint):
    table, _ = pool(20)
    stage = ClipScore(model=str(checkpoint), batch_size=6, embeddings=True, decode_workers=2)
    out = stage(table)

    expected = plain_open_clip_scores(checkpoint, table)
    assert out.column("clip_score").type == pa.float32()
    np.testing.assert_allclose(out.column("clip_score").to_numpy(), expected, atol=1e-4, rtol=0)
    assert out.column("reject").null_count == 20
    assert out.column("uid").to_pylist() == table.column("uid").to_pylist()

    image_emb = np.array(out.column("clip_image_emb").to_pylist(), dtype=np.float32)
    text_emb = np.array(out.column("clip_text_emb").to_pylist(), dtype=np.float32)
    assert out.column("clip_image_emb").type == pa.list_(pa.float16(), 32)
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose((image_emb * text_emb).sum(axis=1), expected, atol=5e-3)


def test_model_spellings_load_the_same_model(checkpoint):
    table, _ = pool(6)
    expected = plain_open_clip_scores(checkpoint, table)
    config = checkpoint.parent / "tiny_clip.json"
    for model, pretrained in [
        (f"local-dir:{checkpoint}", None),
        (str(checkpoint), None),
        (str(config), str(checkpoint.parent / "weights.bin")),
        (str(checkpoint / "open_clip_config.json"), str(checkpoint / "open_clip_pytorch_model.bin")),
    ]:
        out = ClipScore(model=model, pretrained=pretrained)(table)
        np.testing.assert_allclose(out.column("clip_score").to_numpy(), expected, atol=1e-4, err_msg=model)
    assert load_clip(str(checkpoint)).tokenizer(["a red square"]).shape == (1, 16)


def test_trained_checkpoint_scores_matched_pairs_higher(checkpoint):
    """The DFN loop in miniature: a model trained on trusted pairs separates the pool."""
    table, mismatched = pool(36, mismatch_every=3)
    scores = ClipScore(model=str(checkpoint))(table).column("clip_score").to_numpy()
    assert scores[~mismatched].mean() > scores[mismatched].mean() + 0.2


def test_decode_errors_missing_images_and_earlier_rejects(checkpoint):
    table, _ = pool(5)
    images = table.column("image").to_pylist()
    images[1] = b"not an image at all"
    images[2] = images[2][:40]  # truncated JPEG header
    images[3] = None
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    table = table.set_column(
        table.schema.get_field_index("reject"), "reject", pa.array([None, None, None, None, "basic_filter:aspect_ratio"])
    )
    out = ClipScore(model=str(checkpoint), embeddings=True)(table)

    assert out.column("reject").to_pylist() == [
        None,
        "clip_score:decode_error",
        "clip_score:decode_error",
        "clip_score:missing_image",
        "basic_filter:aspect_ratio",
    ]
    scores = out.column("clip_score").to_pylist()
    assert scores[0] is not None and scores[1:] == [None] * 4
    assert out.column("clip_image_emb").null_count == 4
    assert out.column("image").to_pylist()[1:4] == [None] * 3  # rejected here: image bytes dropped

    broken = ClipScore(model=str(checkpoint), embeddings=True)(table.slice(1, 2))  # nothing decodes
    assert broken.column("reject").to_pylist() == ["clip_score:decode_error"] * 2
    assert broken.column("clip_text_emb").type == pa.list_(pa.float16(), 32)


def test_min_score_rejects_below_and_keeps_scores(checkpoint):
    table, _ = pool(24, mismatch_every=2)
    scores = ClipScore(model=str(checkpoint))(table).column("clip_score").to_numpy()
    cut = float(np.median(scores))
    stage = ClipScore(model=str(checkpoint), min_score=cut)
    assert stage.is_global is False
    out = stage(table)
    rejected = np.array([r is not None for r in out.column("reject").to_pylist()])
    np.testing.assert_array_equal(rejected, scores < cut)
    assert set(out.column("reject").drop_null().to_pylist()) == {"clip_score:below_threshold"}
    np.testing.assert_allclose(out.column("clip_score").to_numpy(), scores)  # scores kept for the audit


def test_keep_top_is_a_global_datacomp_cut(checkpoint, ray_local):
    table, mismatched = pool(40, mismatch_every=2)
    table = table.set_column(
        table.schema.get_field_index("reject"), "reject",
        pa.array(["basic_filter:image_too_small" if i == 7 else None for i in range(40)], pa.string()),
    )
    stage = ClipScore(model=str(checkpoint), keep_top=0.3, batch_size=8)
    assert stage.is_global is True and isinstance(stage, GlobalStage)
    assert stage.resources().num_gpus == 0 and stage.resources().batch_size == 32

    prepared = pa.concat_tables([stage.prepare(table.slice(0, 16)), stage.prepare(table.slice(16))])
    kept = prepared.filter(prepared.column("reject").is_null())
    stage.fit(ray.data.from_arrow([kept.slice(0, 10), kept.slice(10)]))
    shipped = pickle.loads(pickle.dumps(stage))  # the runner ships the fitted stage to workers
    assert shipped.resources().num_gpus == 0 and shipped._runtime is None
    out = pa.concat_tables([shipped(prepared.slice(0, 20)), shipped(prepared.slice(20))])

    scores = kept.column("clip_score").to_numpy()
    top = set(np.array(kept.column("uid").to_pylist())[np.argsort(-scores)[: int(39 * 0.3)]])
    survivors = set(out.filter(out.column("reject").is_null()).column("uid").to_pylist())
    assert survivors == top and len(survivors) == 11
    reasons = out.column("reject").to_pylist()
    assert reasons[7] == "basic_filter:image_too_small"
    assert reasons.count("clip_score:below_threshold") == 28
    assert stage.summary()["threshold"] == pytest.approx(min(scores[np.argsort(-scores)[:11]]))
    assert stage.stats()["histogram"].column("pairs").to_numpy().sum() == 39
    assert shipped._runtime is None  # thresholding stored scores loaded no model
    kept_uids = [int(u[1:]) for u in survivors]
    assert np.mean(mismatched[kept_uids]) < 0.5  # the cut keeps mostly matched pairs


def test_config_is_validated():
    with pytest.raises(pydantic.ValidationError, match="keep_top"):
        ClipScore(model="ViT-B-32", keep_top=1.5)
    with pytest.raises(pydantic.ValidationError, match="model"):
        ClipScore()
    with pytest.raises(pydantic.ValidationError, match="batch_szie"):
        ClipScore(model="ViT-B-32", batch_szie=3)
    assert ClipScore(model="ViT-B-32").resources().concurrency == 1


def test_through_the_runner_with_ray(checkpoint, ray_local, sample_web, tmp_path):
    """download -> basic_filter -> clip_score(keep_top) on the local sample web, on Ray."""
    from clipcurate.pipelines.recipe import parse_recipe
    from clipcurate.pipelines.runner import RunOptions, run_pipeline

    recipe, stages = parse_recipe(
        {
            "name": "clip-score-test",
            "input": {"partition_size": 100},
            "output": {"shard_rows": 500},
            "stages": [
                {"download": {"image_size": 64, "timeout": 5, "allow_private_networks": True}},
                {"basic_filter": {"min_image_side": 32}},
                {"clip_score": {"model": str(checkpoint), "keep_top": 0.5, "embeddings": True, "batch_size": 16}},
            ],
        }
    )
    pool_path = sample_web.write_pool(str(tmp_path / "pool.parquet"))
    manifest = run_pipeline(recipe, stages, pool_path, str(tmp_path / "out"), RunOptions(progress=False))

    clip = next(s for s in manifest["stages"] if s["type"] == "clip_score")
    assert manifest["totals"]["input"] == manifest["totals"]["kept"] + manifest["totals"]["rejected"]
    assert clip["kept"] == int(clip["in"] * 0.5) and set(clip["reasons"]) == {"clip_score:below_threshold"}
    assert clip["summary"]["threshold"] is not None
    shards = pq.read_table(tmp_path / "out" / "shards")
    assert shards.schema.field("clip_score").type == pa.float32()
    assert shards.schema.field("clip_image_emb").type == pa.list_(pa.float16(), 32)
    assert pc.min(shards.column("clip_score")).as_py() >= clip["summary"]["threshold"]
    assert (tmp_path / "out" / manifest["stats"]["clip_score.histogram"]).exists()


def test_gpu_split_transform_matches_open_clip_preprocess(checkpoint):
    """On GPU the decode threads stop at uint8 and normalise on the device: same pixels."""
    from clipcurate.train.clip_model import _split_transform

    preprocess = load_clip(str(checkpoint)).preprocess
    cpu_part, (mean, std) = _split_transform(preprocess, torch.device("cpu"))
    image = Image.open(io.BytesIO(jpeg(draw("blue", "circle", seed=3, size=80))))
    pixels = cpu_part(image)
    assert pixels.dtype == torch.uint8
    torch.testing.assert_close((pixels.float() / 255.0 - mean) / std, preprocess(image), atol=1e-6, rtol=0)


def test_keep_clean_threshold_is_calibrated_on_reference_pairs(checkpoint, ray_local, tmp_path):
    reference, _ = pool(36, seed=5000)  # true pairs the model did not train on
    pq.write_table(reference, tmp_path / "reference.parquet")
    ref_scores = ClipScore(model=str(checkpoint))(reference).column("clip_score").to_numpy()
    stage = ClipScore(model=str(checkpoint), keep_clean=0.9, reference=str(tmp_path / "reference.parquet"))
    assert stage.is_global
    table, _ = pool(24, mismatch_every=3)
    prepared = stage.prepare(table)
    stage.fit(ray.data.from_arrow(prepared))
    expected = float(np.quantile(ref_scores, 0.1))
    assert stage.summary()["calibrated_threshold"] == pytest.approx(expected, abs=1e-5)
    out = pickle.loads(pickle.dumps(stage))(prepared)
    rejected = np.array([r is not None for r in out.column("reject").to_pylist()])
    np.testing.assert_array_equal(rejected, prepared.column("clip_score").to_numpy() < stage.summary()["threshold"])
    with pytest.raises(pydantic.ValidationError, match="keep_clean and reference go together"):
        ClipScore(model=str(checkpoint), keep_clean=0.9)


def test_scores_from_the_same_model_are_reused(checkpoint, tmp_path, monkeypatch):
    table, _ = pool(12)
    scored = ClipScore(model=str(checkpoint))(table)
    metadata = scored.schema.field("clip_score").metadata
    assert metadata[b"clipcurate.model"].startswith(str(checkpoint).encode())
    pq.write_table(scored, tmp_path / "scored.parquet")  # the fingerprint survives parquet
    scored = pq.read_table(tmp_path / "scored.parquet")
    monkeypatch.setattr("clipcurate.filters.clip_score.ClipScore._load", lambda self: pytest.fail("model loaded again"))
    again = ClipScore(model=str(checkpoint), min_score=0.0)(scored)
    np.testing.assert_array_equal(again.column("clip_score").to_numpy(), scored.column("clip_score").to_numpy())
    other = scored.replace_schema_metadata(None).cast(pa.schema(
        [f.with_metadata({b"clipcurate.model": b"another model"}) if f.name == "clip_score" else f
         for f in scored.schema]))
    with pytest.raises(pytest.fail.Exception, match="model loaded again"):
        ClipScore(model=str(checkpoint))(other)  # another model's scores are recomputed


def test_keep_matched_cuts_where_the_score_mixture_says(checkpoint, ray_local):
    table, mismatched = pool(48, mismatch_every=3)
    stage = ClipScore(model=str(checkpoint), keep_matched=0.8)
    assert stage.is_global
    prepared = stage.prepare(table)
    stage.fit(ray.data.from_arrow(prepared))
    summary = stage.summary()
    low, high = summary["mixture_means"]
    assert low < summary["mixture_threshold"] <= high
    out = pickle.loads(pickle.dumps(stage))(prepared)
    rejected = np.array([r is not None for r in out.column("reject").to_pylist()])
    scores = prepared.column("clip_score").to_numpy()
    np.testing.assert_array_equal(rejected, scores < summary["threshold"])
    assert rejected[mismatched].mean() > rejected[~mismatched].mean()  # the cut falls on the mismatches


def test_a_copied_checkpoint_is_the_same_model(checkpoint, tmp_path):
    """The fingerprint's digest is the checkpoint's content: a copy elsewhere reuses
    scores and embeddings made by the original; retrained weights do not."""
    import shutil

    from clipcurate.train.clip_model import model_fingerprint
    from clipcurate.train.embedding_columns import same_model

    copy = shutil.copytree(checkpoint, tmp_path / "copy")
    assert same_model(model_fingerprint(str(checkpoint)), model_fingerprint(str(copy)))
    weights = copy / "open_clip_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1.0
    torch.save(state, weights)
    assert not same_model(model_fingerprint(str(checkpoint)), model_fingerprint(str(tmp_path / "copy")))
