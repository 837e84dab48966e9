"""Every bundled recipe loads and validates (stages exist, parameters typed, columns)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clipcurate.pipelines import recipe as recipe_module
from clipcurate.pipelines.errors import RecipeError
from clipcurate.pipelines.recipe import build_stages, load_recipe
from clipcurate.pipelines.registry import stage_class
from clipcurate.pipelines.stage import Stage, StageConfig

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


@pytest.mark.parametrize(
    "stages, message",
    [
        ("  - download: {}\n  - basic_filter: {}\n  - download: {image_size: 128}\n",
         r"r.yaml: stages\[2\].download: listed again after stages\[0\]; a recipe has one download stage"),
        ("  - download: {}\n  - basic_filter: {}\n  - basic_filter: {}\n",
         r"r.yaml: stages\[2\].basic_filter: same parameters as stages\[1\]; a repeated stage needs different"),
        ("  - download: {}\n  - language_filter: {keep_languages: [en]}\n  - language_filter: {keep_languages: [en]}\n",
         r"stages\[2\].language_filter: same parameters as stages\[1\]"),
    ],
)
def test_a_stage_listed_twice_to_no_purpose_is_refused(tmp_path, stages, message):
    """Two downloads would fetch every URL twice; an identical repeat only costs time."""
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n" + stages)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_a_stage_repeated_with_other_parameters_gets_its_own_label(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - download: {}\n  - language_filter: {keep_languages: [en]}\n"
                    "  - language_filter: {keep_languages: [en, de]}\n")
    _, stages = load_recipe(path)
    assert [s.label for s in stages] == ["download", "language_filter", "language_filter_2"]


class _Scored(Stage):
    class Config(StageConfig):
        min_score: float = 0.0
        batch_size: int = 64

    name = "scored"
    speed_params = ("batch_size",)


def test_a_repeat_that_differs_only_in_speed_is_refused(monkeypatch):
    monkeypatch.setattr(recipe_module, "stage_class", lambda name: _Scored)
    with pytest.raises(RecipeError, match=r"stages\[1\].scored: same parameters as stages\[0\]"):
        build_stages([{"scored": {}}, {"scored": {"batch_size": 512}}])
    assert [s.label for s in build_stages([{"scored": {}}, {"scored": {"min_score": 0.3}}])] == ["scored", "scored_2"]


ENTRY_WITH_DEFAULTS = re.compile(r"^\s*-\s*(\w+):\s*\{\}\s*#(.*)$")  # - dedup_perceptual: {}   # radius 4 ...
NAMED_NUMBER = re.compile(r"([A-Za-z_]+)\s+(\d+(?:\.\d+)?)\b")


def test_numbers_a_comment_gives_a_default_stage_are_its_defaults():
    """``- dedup_perceptual: {}  # ... radius 4``: a stage left at its defaults, whose
    comment names a parameter (by its name or a word of its description) with a number,
    must give that parameter's real default; a comment is not re-read when a default
    is re-measured."""
    checked = []
    for path in RECIPES:
        for line in path.read_text().splitlines():
            entry = ENTRY_WITH_DEFAULTS.match(line)
            if not entry:
                continue
            fields = stage_class(entry[1]).Config.model_fields
            for word, number in NAMED_NUMBER.findall(entry[2]):
                named = [field for name, field in fields.items() if _names(name, field, word.lower())]
                defaults = [field.default for field in named if type(field.default) in (int, float)]
                if defaults:
                    assert float(number) in defaults, f"{path.name}: {line.strip()} (default: {defaults})"
                    checked.append(line)
    assert checked  # dedup.yaml's perceptual radius at least


def _names(name: str, field, word: str) -> bool:
    """Whether ``word`` of a comment names the parameter ``name``."""
    return word in (name, *name.split("_"), *(field.description or "").lower().replace("(", " ").split())
