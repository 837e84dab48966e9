"""Recipes: YAML files that name an input format, an output layout and ordered stages.

Validation happens here, before any work starts: an unknown stage, a missing or
mistyped parameter, or a column that no earlier stage provides is one line that
names the recipe key (``stages[2].clip_score.min_score: ...``), never a traceback;
one error lists every such line of the recipe, and a misspelt name its closest match.
A stage listed twice must differ in its parameters and is labelled ``<name>_2``; a
second download is refused (``build_stages``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clipcurate.pipelines.errors import RecipeError, did_you_mean
from clipcurate.pipelines.overrides import apply_sets, stage_label
from clipcurate.pipelines.registry import UnknownStage, stage_class
from clipcurate.pipelines.stage import SAMPLE_SCHEMA, Stage

WARN_REJECT_SHARE = 0.3


class InputConfig(BaseModel):
    """How to read the URL + caption list."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["auto", "parquet", "csv", "tsv", "jsonl", "txt"] = "auto"
    url_col: str = "url"
    caption_col: str = "caption"
    partition_size: int = Field(1000, gt=0, description="rows per input partition (unit of resume)")


class OutputConfig(BaseModel):
    """How to lay out the final shards."""

    model_config = ConfigDict(extra="forbid")
    shard_rows: int = Field(10_000, gt=0, description="kept rows per output shard (at most)")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "recipe"
    seed: int = 0
    input: InputConfig = InputConfig()
    output: OutputConfig = OutputConfig()
    warn_reject_share: float = Field(
        WARN_REJECT_SHARE, ge=0.0, le=1.0,
        description="flag a stage (the input reader too) that removes more than this share of the rows it receives",
    )
    stages: list[dict] = Field(default_factory=list)
    overrides: list[str] = Field(
        default_factory=list,
        description="the `--set LABEL.PARAM=VALUE` overrides this run applied to the recipe file, in order",
    )
    against: list[str] = Field(
        default_factory=list,
        description="earlier releases (finished run outputs) to curate against: dedup matches them, MetaCLIP "
        "continues their counts (pipelines/release.py; `curate run --against`)",
    )
    blocklist: list[str] = Field(
        default_factory=list,
        description="blocklist files (uids, URLs, sha256, perceptual hashes): adds blocklist stages before and "
        "after the download (dedup/blocklist.py; `curate run --blocklist`)",
    )


def load_recipe(path: str | Path, *, against=(), blocklist=(), sets=()) -> tuple[Recipe, list[Stage]]:
    """Read and validate a recipe file; returns the recipe and its built stages.
    ``against`` and ``blocklist`` (the ``curate run`` flags) add to the recipe's own;
    ``sets`` are ``--set LABEL.PARAM=VALUE`` overrides (``pipelines/overrides.py``)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not valid UTF-8 (byte {err.start + 1})") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({_one_line(str(err))})") from None
    except RecursionError:
        raise RecipeError(f"{path}: nested more than {MAX_DEPTH} levels deep") from None
    check_shape(raw, str(path))
    raw = apply_sets(raw if raw is not None else {}, list(sets), str(path))
    raw = expand_env(raw, str(path))
    if (against or blocklist) and isinstance(raw, dict):
        for key in ("against", "blocklist"):
            if not isinstance(raw.get(key, []), list):
                raise RecipeError(f"{path}: {key}: a list of paths, got {type(raw[key]).__name__}")
        raw = {**raw, "against": [*raw.get("against", []), *map(str, against)],
               "blocklist": [*raw.get("blocklist", []), *map(str, blocklist)]}
    return parse_recipe(raw, source=str(path))


MAX_DEPTH = 64  # a recipe's deepest nesting is 4 or 5 levels
MAX_NODES = 100_000  # values once YAML aliases are expanded (the shipped recipes: a few hundred)


def check_shape(raw, where: str) -> None:
    """Refuse a recipe nested past ``MAX_DEPTH`` or past ``MAX_NODES`` values once its
    aliases are expanded: ten nested ``[*a, *a, ...]`` anchors are a few hundred bytes of
    YAML and 10^10 values to walk ("billion laughs"). Each object is counted once, so
    the check is linear in the YAML."""
    sizes: dict[int, int] = {}

    def size(value, depth: int) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        if depth > MAX_DEPTH:
            raise RecipeError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if id(value) not in sizes:
            children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            sizes[id(value)] = 1 + sum(size(child, depth + 1) for child in children)
            if sizes[id(value)] > MAX_NODES:
                raise RecipeError(f"{where}: more than {MAX_NODES:,} values once YAML aliases are expanded")
        return sizes[id(value)]

    size(raw, 0)


def expand_env(value, where: str):
    """Replace ``${NAME}`` in string values with the environment variable NAME
    (e.g. a model path that only the caller knows); an unset name is an error."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}: {k}" if ":" not in where else f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def lookup(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise RecipeError(f"{where}: environment variable {name} is not set")
            return os.environ[name]

        return _ENV.sub(lookup, value)
    return value


RECIPES_DIR = Path(__file__).parent / "recipes"  # the ready recipes shipped with the package
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_recipe(raw: dict, source: str = "recipe") -> tuple[Recipe, list[Stage]]:
    """Validate a recipe mapping and build its stages. Every problem found, top-level
    keys and every stage, is one line of one RecipeError: a recipe is fixed in one pass."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with keys name, seed, input, output, stages")
    problems = []
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        recipe = None
        problems += [f"{source}: {line}" for line in _errors(err, Recipe)]
    entries = recipe.stages if recipe else raw.get("stages")
    seed = recipe.seed if recipe else raw.get("seed")
    stages = []
    if isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries):  # else reported above
        try:
            stages = build_stages(entries, source=source, seed=seed if type(seed) is int else None)
        except RecipeError as err:
            problems.append(str(err))
    if problems:
        raise RecipeError("\n".join(problems))
    if recipe.blocklist:
        stages = blocklist_stages(stages, recipe.blocklist)
    check_columns(stages, source=source)
    return recipe, stages


def blocklist_stages(stages: list[Stage], paths: list[str]) -> list[Stage]:
    """``stages`` with the blocklist checked where each kind can be: uids and URLs first
    (before any download), image hashes right after the download; without a download
    (images in the input) one stage checks every kind first."""
    cls = stage_class("blocklist")
    download = max((i + 1 for i, s in enumerate(stages) if s.checkpoint), default=0)
    if download == 0:
        return [cls(paths=list(paths)), *stages]
    before = cls(paths=list(paths), check=["uid", "url"])
    after = cls(paths=list(paths), check=["sha256", "phash"])
    after.label = "blocklist_image"
    return [before, *stages[:download], after, *stages[download:]]


def build_stages(entries: list, source: str = "recipe", seed: int | None = None) -> list[Stage]:
    """Each entry is a one-key mapping ``{stage_name: {params}}`` (or a bare name).

    ``seed`` (the recipe's) goes to every stage that draws randomness (a ``seed``
    parameter) and does not set its own, so one number reproduces a whole run.

    A stage may be listed again with other parameters (two CLIP score filters with
    different models); the second is labelled ``<name>_2`` in reject reasons and counts.
    A repeat whose parameters differ only in speed (``speed_params``) or not at all is
    refused (it only costs time), and so is a second checkpoint stage (the download:
    it would fetch every URL twice).

    Every entry is checked; the problems of all of them are one RecipeError, a line each."""
    stages: list[Stage] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        try:
            stage = _build_stage(entry, f"{source}: stages[{i}]", seed)
            _refuse_repeat(stage, stages, f"{source}: stages[{i}].{stage.name}")
        except RecipeError as err:
            problems.append(str(err))
            continue
        seen[stage.name] = seen.get(stage.name, 0) + 1
        stage.label = stage_label(stage.name, seen[stage.name])
        stages.append(stage)
    if problems:
        raise RecipeError("\n".join(problems))
    return stages


def _build_stage(entry, where: str, seed: int | None) -> Stage:
    """One stage from its recipe entry; a RecipeError holds all of the entry's problems."""
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise RecipeError(f"{where}: each stage is a one-key mapping like '- basic_filter: {{}}'")
    (name, params), = entry.items()
    params = params or {}
    key = f"{where}.{_key(name)}"
    if not isinstance(params, dict):
        raise RecipeError(f"{key}: parameters must be a mapping, got {type(params).__name__}")
    try:
        cls = stage_class(name)
    except UnknownStage as err:
        raise RecipeError(f"{key}: {err.args[0]}") from None
    if seed is not None and "seed" in cls.Config.model_fields and "seed" not in params:
        params = {**params, "seed": seed}
    try:
        config = cls.Config.model_validate(params)
    except ValidationError as err:
        raise RecipeError("\n".join(f"{key}.{line}" for line in _errors(err, cls.Config))) from None
    try:
        return cls(config)
    except ValueError as err:  # a combination the stage's library refuses (datasketch's LSH bands)
        raise RecipeError(f"{key}: {_one_line(str(err))}") from None


def _refuse_repeat(stage: Stage, earlier: list[Stage], key: str) -> None:
    """A repeated stage must do something its earlier entry did not (see ``build_stages``)."""
    def params(s: Stage) -> dict:
        return s.config.model_dump(mode="json", exclude=set(s.speed_params))

    for j, other in enumerate(earlier):
        if other.name != stage.name:
            continue
        if stage.checkpoint:
            raise RecipeError(f"{key}: listed again after stages[{j}]; a recipe has one {stage.name} stage")
        if params(other) == params(stage):
            raise RecipeError(f"{key}: same parameters as stages[{j}]; a repeated stage needs different parameters")


def check_columns(stages: list[Stage], source: str = "recipe", available: set[str] | None = None) -> None:
    """Every column a stage reads must exist in the input schema or be added earlier."""
    have = set(SAMPLE_SCHEMA.names) if available is None else set(available)
    for i, stage in enumerate(stages):
        for column in stage.reads:
            if column not in have:
                raise RecipeError(
                    f"{source}: stages[{i}].{stage.name}: needs column '{column}', "
                    f"which neither the input nor an earlier stage provides"
                )
        have.update(stage.adds)


def _errors(err: ValidationError, model: type[BaseModel]) -> list[str]:
    """Every error of a validation as ``key: message``, one line each; an unknown key
    names the closest keys ``model`` accepts there."""
    lines = []
    for error in err.errors():
        loc = ".".join(_key(part) for part in error["loc"])
        msg = error["msg"]
        if error["type"] == "extra_forbidden":
            msg = "unknown parameter" + did_you_mean(error["loc"][-1], _known_keys(model, error["loc"][:-1]))
        elif "input" in error and error["type"] != "missing":
            shown = repr(error["input"])
            msg = f"{msg} (got {shown if len(shown) <= 80 else shown[:80] + '...'})"
        lines.append(_one_line(f"{loc}: {msg}" if loc else msg))
    return lines


def _known_keys(model: type[BaseModel], path: tuple) -> list[str]:
    """The keys ``model`` accepts at ``path`` (through nested models, not lists or dicts)."""
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _key(part) -> str:
    """A recipe key for a one-line message (a YAML key may hold a newline)."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())
