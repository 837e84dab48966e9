"""Fuzzed YAML through the recipe loader (``curate run``'s path): a Recipe with built
stages or a one-line UserError, within seconds and a memory budget."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import given

from targets import check_recipe, fuzz_settings, recipe_cases, recipe_env, warm_up_recipes


@pytest.fixture(scope="module")
def shipped_env(tmp_path_factory):
    with recipe_env(tmp_path_factory.mktemp("recipe-env")) as values:
        warm_up_recipes()
        yield values


@fuzz_settings(40)
@given(case=recipe_cases())
def test_fuzzed_recipes_load_or_give_one_line_errors(shipped_env, case):
    with tempfile.TemporaryDirectory() as folder:
        check_recipe(case, folder)
