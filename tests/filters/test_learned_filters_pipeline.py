"""text_classes, clip_heads (keep_top: global) and image_clusters through the engine: the
embeddings an earlier stage stored travel with the rows (field metadata included), Ray
and inline runs keep the same rows, and the bundled recipes load."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from clipcurate.pipelines.recipe import load_recipe, parse_recipe
from clipcurate.pipelines.runner import RunOptions, run_pipeline
from clipcurate.train.clip_model import model_fingerprint
from clipcurate.train.heads import Head, HeadNet, save_head

from test_heads import LaionAestheticMLP
from test_image_clusters import MODEL, PRETRAINED, TARGET_CLUSTERS, embedding_column, marked, pool_table, synthetic

RECIPES = Path(__file__).parents[2] / "pipelines" / "recipes"


def linear_head(path: Path, name: str, dim: int, spec: str, pretrained: str | None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    layers = [f"linear:{dim}:1"]
    metadata = {"name": name, "input": "image", "normalize": True,
                "model": {"spec": spec, "pretrained": pretrained, "fingerprint": model_fingerprint(spec, pretrained),
                          "embed_dim": dim},
                "output": {"kind": "probability", "positive": name, "column": "label"}}
    return save_head(Head(HeadNet(layers), layers, metadata), path)


def test_filters_through_run_pipeline_ray_and_inline(ray_local, tmp_path):
    fingerprint = model_fingerprint(MODEL, PRETRAINED)
    pool, labels, target = synthetic()
    n = len(pool)
    captions = ["a golden retriever" if i % 4 else "a thing" for i in range(n)]
    table = pool_table(pool, fingerprint).drop_columns(["uid", "image", "reject"])
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions))
    source, target_path = tmp_path / "pool.parquet", tmp_path / "target.parquet"
    pq.write_table(table, source)
    pq.write_table(marked(pa.table({"clip_image_emb": embedding_column(target)}), fingerprint), target_path)
    head = linear_head(tmp_path / "junk.head.pt", "junk", 512, MODEL, PRETRAINED)
    raw = {"name": "t", "input": {"partition_size": 120}, "warn_reject_share": 1.0, "stages": [
        {"text_classes": {}},
        {"clip_heads": {"heads": [{"name": "junk", "path": str(head), "keep_bottom": 0.8}]}},
        {"image_clusters": {"model": MODEL, "pretrained": PRETRAINED, "target": str(target_path), "num_clusters": 8}},
    ]}
    results = {}
    for mode, options in {"ray": RunOptions(progress=False, num_cpus=2),
                          "inline": RunOptions(inline=True, progress=False)}.items():
        recipe, stages = parse_recipe(raw)
        out = tmp_path / mode
        manifest = run_pipeline(recipe, stages, [str(source)], str(out), options)
        by_name = {s["name"]: s for s in manifest["stages"]}
        assert by_name["text_classes"]["reasons"] == {"text_classes:no_class_name": n // 4}
        assert by_name["clip_heads"]["kept"] == int(0.8 * by_name["clip_heads"]["in"])  # no ties in float scores
        assert by_name["clip_heads"]["summary"]["heads"][0]["max_score"] is not None
        assert by_name["image_clusters"]["summary"]["target_clusters"] >= 1
        shards = pq.read_table(out / "shards")
        results[mode] = sorted(shards.column("url").to_pylist())
        assert {"junk_score", "class_ids", "image_cluster"} <= set(shards.column_names)
    assert results["ray"] == results["inline"]

    from clipcurate.curation.audit.report import write_report

    report = write_report(tmp_path / "ray", samples=0, per_reason=0)
    rows = {r["filter"]: r for r in report.stats["learned_filters"]}
    assert set(rows) == {"text_classes", "head junk", "image_clusters"}
    assert rows["text_classes"]["removed"] == n // 4 and rows["text_classes"]["share_of_pool"] == 0.25
    assert rows["head junk"]["keep_bottom"] == 0.8 and rows["head junk"]["removed"] > 0
    page = report.index.read_text()
    assert "Heads and DataComp filters" in page and "head junk score histogram" in page
    assert (report.index.parent / "assets" / "a_column_junk_score.png").exists()
    kept_labels = {int(labels[int(url.rsplit("/", 1)[1])]) for url in results["ray"]}
    assert kept_labels and kept_labels <= set(range(8))
    assert kept_labels & set(TARGET_CLUSTERS)


def test_bundled_recipes_load(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIP_MODEL", "ViT-B-32")
    monkeypatch.setenv("TARGET_IMAGES", str(tmp_path / "target.parquet"))
    recipe, stages = load_recipe(RECIPES / "datacomp-image-based.yaml")
    assert [s.name for s in stages][-2:] == ["clip_score", "image_clusters"]

    aesthetic = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(LaionAestheticMLP(768).state_dict(), aesthetic)
    monkeypatch.setenv("AESTHETIC_HEAD", str(aesthetic))
    for name in ("nsfw", "watermark"):
        monkeypatch.setenv(f"{name.upper()}_HEAD", str(linear_head(tmp_path / f"{name}.head.pt", name, 768,
                                                                     "ViT-L-14", "openai")))
    recipe, stages = load_recipe(RECIPES / "laion-heads.yaml")
    heads = stages[-1]
    assert heads.name == "clip_heads" and list(heads.adds) == ["nsfw_score", "watermark_score", "aesthetic_score"]
