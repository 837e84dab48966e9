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
    recipe, stages = load_recipe(path)
    assert stages and stages[0].name == "download"
    assert recipe.name == path.stem
