"""``--set LABEL.PARAM=VALUE``: typed and validated like the YAML, labels as the funnel
shows them, mistakes named in one line."""

from __future__ import annotations

import pytest
import yaml

from clipcurate.pipelines.errors import RecipeError
from clipcurate.pipelines.recipe import load_recipe

RECIPE = {
    "name": "sets",
    "stages": [{"download": {"allow_private_networks": True}}, "basic_filter",
               {"language_filter": {"keep_languages": ["en"]}},
               {"dedup_perceptual": {"max_distance": 2}}, {"dedup_perceptual": {"max_distance": 6, "hashes": ["dhash"]}}],
}


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def _params(stages, label):
    return next(s for s in stages if s.label == label).config


def test_values_are_typed_by_yaml_and_the_stage_config(recipe_file):
    recipe, stages = load_recipe(recipe_file, sets=["basic_filter.min_words=4", "language_filter.keep_languages=[en, de]",
                                                    "dedup_perceptual_2.max_distance=8", "seed=7",
                                                    "input.partition_size=50"])
    assert _params(stages, "basic_filter").min_words == 4
    assert _params(stages, "language_filter").keep_languages == ["en", "de"]
    assert _params(stages, "dedup_perceptual").max_distance == 2
    assert _params(stages, "dedup_perceptual_2").max_distance == 8
    assert (recipe.seed, recipe.input.partition_size) == (7, 50)
    assert recipe.overrides[0] == "basic_filter.min_words=4"


def test_environment_variables_in_a_value_are_expanded_like_the_files(recipe_file, monkeypatch):
    monkeypatch.setenv("MIN_WORDS", "5")
    _, stages = load_recipe(recipe_file, sets=["basic_filter.min_words=${MIN_WORDS}"])
    assert _params(stages, "basic_filter").min_words == 5


@pytest.mark.parametrize("setting, message", [
    ("basic_filtr.min_words=3", "no stage labelled 'basic_filtr' (did you mean 'basic_filter'?)"),
    ("basic_filter.min_words=many", "min_words"),
    ("basic_filter.no_such_param=1", "no_such_param"),
    ("basic_filter", "write LABEL.PARAM=VALUE"),
    ("basic_filter=3", "name a parameter of stage 'basic_filter'"),
    ("basic_filter.min_words=[1", "not valid YAML"),
])
def test_a_bad_setting_is_a_one_line_recipe_error(recipe_file, setting, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe_file, sets=[setting])
    assert message in str(err.value)
    assert "\n" not in str(err.value).split(":", 1)[0]
