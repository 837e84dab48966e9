"""Every bundled recipe loads and validates (stages exist, parameters typed, columns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipcurate.pipelines.recipe import load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "pipelines" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_bundled_recipe_validates(path, monkeypatch, tmp_path):
    metadata = tmp_path / "entries.txt"
    metadata.write_text("circle\nred\n")
    for name in ("CLIPCURATE_FILTER_MODEL", "CLIP_MODEL"):
        monkeypatch.setenv(name, "ViT-B-32")
    for name in ("CLIPCURATE_METADATA", "METACLIP_METADATA"):
        monkeypatch.setenv(name, str(metadata))
    monkeypatch.setenv("TARGET_IMAGES", str(tmp_path / "target.parquet"))  # read at fit, not at load
    for name, head in _head_files(tmp_path).items():  # laion-heads.yaml: heads load (and are checked) at load
        monkeypatch.setenv(name, head)
    recipe, stages = load_recipe(path)
    assert stages and stages[0].name == "download"
    assert recipe.name == path.stem


def _head_files(folder: Path) -> dict[str, str]:
    """Head files over OpenAI ViT-L/14 embeddings: LAION's aesthetic state dict and two of ours."""
    import torch

    from clipcurate.train.heads import PUBLISHED, Head, HeadNet, save_head

    files = {"AESTHETIC_HEAD": folder / "aesthetic.pth"}
    torch.save(HeadNet(list(PUBLISHED["laion_aesthetic"].layers)).state_dict(), files["AESTHETIC_HEAD"])
    for name in ("nsfw", "watermark"):
        metadata = {"name": name, "model": {"spec": "ViT-L-14", "pretrained": "openai", "embed_dim": 768},
                    "output": {"kind": "probability", "positive": name}}
        files[f"{name.upper()}_HEAD"] = save_head(Head(HeadNet(["linear:768:1"]), ["linear:768:1"], metadata),
                                                  folder / f"{name}.head.pt")
    return {name: str(path) for name, path in files.items()}
