"""``--set LABEL.PARAM=VALUE``: change one value of a recipe without copying the file.

``LABEL`` is a stage's label as reject reasons show it (its name; ``<name>_2`` for the
second of two) or a top-level key (``seed``, ``input``, ``output``,
``warn_reject_share``); ``PARAM`` may go deeper with more dots. ``VALUE`` is read as a
YAML scalar or flow value (``0.6``, ``true``, ``[en, de]``, ``'${VAR}'``), set in the
raw recipe before environment variables are expanded, and then validated with the rest
of the recipe by the stage's own config, exactly as if the file had said it. The
applied settings are kept in the recipe's ``overrides`` (so in the manifest).
"""

from __future__ import annotations

import copy
import difflib

import yaml

from clipcurate.pipelines.errors import RecipeError

TOP_LEVEL = ("name", "seed", "input", "output", "warn_reject_share")


def apply_sets(raw: dict, sets: list[str], source: str) -> dict:
    """``raw`` (a recipe as YAML gives it) with every ``--set`` applied, in order."""
    if not sets:
        return raw
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with keys name, seed, input, output, stages")
    raw = copy.deepcopy(raw)
    for text in sets:
        path, value = _parse(text)
        _assign(raw, path, value, text, source)
    raw["overrides"] = [*raw.get("overrides", []), *sets]
    return raw


def _parse(text: str) -> tuple[list[str], object]:
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise RecipeError(f"--set {text!r}: write LABEL.PARAM=VALUE, e.g. --set clip_score.keep_matched=0.6 "
                          f"or --set seed=1")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        raise RecipeError(f"--set {text!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    return path, parsed


def stage_label(name: str, nth: int) -> str:
    """The label of the ``nth`` (1-based) stage called ``name`` in a recipe: the name,
    then ``<name>_2``, ``<name>_3`` (reject reasons and counts use it)."""
    return name if nth == 1 else f"{name}_{nth}"


def stage_labels(raw: dict) -> dict[str, int]:
    """Label -> index in ``raw['stages']``, labelled as the recipe loader labels them."""
    labels, seen = {}, {}
    for i, entry in enumerate(raw.get("stages") or []):
        name = entry if isinstance(entry, str) else next(iter(entry), None) if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        seen[name] = seen.get(name, 0) + 1
        labels[stage_label(name, seen[name])] = i
    return labels


def _assign(raw: dict, path: list[str], value, text: str, source: str) -> None:
    head, rest = path[0], path[1:]
    labels = stage_labels(raw)
    if head in labels:
        if not rest:
            raise RecipeError(f"--set {text!r}: name a parameter of stage {head!r} (e.g. {head}.PARAM=VALUE)")
        i = labels[head]
        entry = raw["stages"][i]
        if isinstance(entry, str):
            entry = raw["stages"][i] = {entry: {}}
        (name, params), = entry.items()
        if params is None:
            params = entry[name] = {}
        target = params
    elif head in TOP_LEVEL:
        target, rest = raw, path
    else:
        known = [*labels, *TOP_LEVEL]
        close = difflib.get_close_matches(head, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"--set {text!r}: {source} has no stage labelled {head!r}{hint}; "
                          f"its stages: {', '.join(labels) or 'none'}")
    for part in rest[:-1]:
        if not isinstance(target.get(part, {}), dict):
            raise RecipeError(f"--set {text!r}: {part!r} is not a mapping in {source}")
        target = target.setdefault(part, {})
    target[rest[-1]] = value
