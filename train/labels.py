"""Labelled image sets as others write them, read into one form for zero-shot evaluation.

Zero-shot classification prompts a text tower with class *names* ("a photo of a
sneaker."), so every layout must end in a name per image. The layouts met in practice:

- ``label`` holds class names (strings): our own format (``train/datasets.py``);
- ``label`` holds integers and a column names each class (``class_name``, ``label_name``,
  ``classname``, ``label_text``, or the one given): what a CSV or a pandas export of
  torchvision / Kaggle sets looks like;
- ``label`` holds integers and a class-names file lists the names in index order (one per
  line, or a JSON list or ``{index: name}`` object): ImageNet's ``classnames.txt`` habit;
- a Hugging Face ``datasets`` set whose ``label`` is a ``ClassLabel`` feature: its
  parquet files (``Dataset.to_parquet``, the hub's parquet conversion) carry the
  names in the ``huggingface`` schema metadata; a ``save_to_disk`` folder in its
  ``dataset_info.json``. Its ``Image`` feature (a struct of ``bytes`` and ``path``) is
  read too.

Integer labels with no names anywhere are refused: prompts made of digits ("a photo of
a 3.") give chance-level figures that look like a weak model, not like a wrong input.
Labels that are strings of digits ("3") are refused the same way.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipcurate.pipelines.errors import UserError
from clipcurate.pipelines.limits import read_json

NAME_COLUMNS = ("class_name", "label_name", "classname", "label_text", "class_label")


@dataclass(frozen=True)
class LabelledSet:
    """``table`` has ``image`` (encoded bytes) and ``label`` (the class name of each row)
    plus the source's other columns (``caption`` ...); ``classnames`` is every class, in
    the source's index order when it has one (a class without images still competes)."""

    table: pa.Table
    classnames: list[str]
    layout: str  # "string labels" | "class-name column <name>" | "class-names file" | "ClassLabel"


def read_labelled(source: str | os.PathLike, *, class_names: str | os.PathLike | list[str] | None = None,
                  label_column: str = "label", image_column: str = "image",
                  class_name_column: str | None = None) -> LabelledSet:
    """Read a labelled set (a parquet file, a folder or glob of them, or a Hugging Face
    ``save_to_disk`` folder) and give each image its class name. ``class_names``: a file
    (or list) of names in label order, for integer labels; it wins over a ClassLabel."""
    table, hf_names = _read_table(source)
    for column in (image_column, label_column):
        if column not in table.column_names:
            raise UserError(f"labelled set {source}: no column {column!r} (columns: {', '.join(table.column_names)}; "
                            f"needs an image column and a label column)")
    table = _with_image_bytes(table, image_column, source)
    labels = table.column(label_column)
    given = _load_class_names(class_names) if class_names is not None else None

    if pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
        digits = pc.all(pc.match_substring_regex(pc.drop_null(labels), r"^\s*\d+\s*$")).as_py()
        if not digits or len(labels) == labels.null_count:
            names, layout, classnames = labels.cast(pa.string()), "string labels", None
        else:
            labels = pc.cast(pc.utf8_trim_whitespace(labels), pa.int64())
            names, classnames, layout = None, None, None
    elif pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type):
        names, classnames, layout = None, None, None
    elif pa.types.is_dictionary(labels.type):
        names, layout, classnames = labels.cast(pa.string()), "string labels", None
    else:
        raise UserError(f"labelled set {source}: column {label_column!r} is {labels.type}; "
                        f"expected class names (strings) or class indices (integers)")

    if names is None:
        indices = _as_indices(labels, source, label_column)
        name_column = class_name_column or next((c for c in NAME_COLUMNS if c in table.column_names), None)
        if given is not None:
            classnames, layout = given, "class-names file"
        elif hf_names is not None:
            classnames, layout = hf_names, "ClassLabel"
        elif name_column is not None:
            if name_column not in table.column_names:
                raise UserError(f"labelled set {source}: no column {name_column!r} for the class names")
            classnames, layout = _names_from_column(indices, table.column(name_column), source, name_column), \
                f"class-name column {name_column}"
        else:
            raise UserError(
                f"labelled set {source}: {label_column!r} holds class indices with no class names; zero-shot prompts "
                f"need names: add a class-name column ({', '.join(NAME_COLUMNS[:2])}), or pass --class-names FILE "
                f"(one name per line, in label order)")
        top = pc.max(indices).as_py()
        if top is not None and (top >= len(classnames) or pc.min(indices).as_py() < 0):
            raise UserError(f"labelled set {source}: label {top} outside the {len(classnames)} class names "
                            f"(labels count from 0)")
        names = pc.take(pa.array(classnames, pa.string()), indices)
    if names.null_count:
        raise UserError(f"labelled set {source}: {names.null_count} rows without a label")
    if classnames is None:
        classnames = sorted(pc.unique(names).to_pylist())
    if len(set(classnames)) != len(classnames):
        repeated = sorted({n for n in classnames if classnames.count(n) > 1})
        raise UserError(f"labelled set {source}: class names repeat ({', '.join(repeated[:5])}); "
                        f"two classes with one name cannot be told apart by a prompt")
    out = table.drop_columns([c for c in ("label",) if c in table.column_names and c != label_column])
    out = out.set_column(out.column_names.index(label_column), "label", names.cast(pa.string()))
    if image_column != "image":
        out = out.drop_columns([c for c in ("image",) if c in out.column_names])
        out = out.rename_columns(["image" if c == image_column else c for c in out.column_names])
    return LabelledSet(out, list(classnames), layout)


def read_images_table(source: str | os.PathLike, image_column: str = "image") -> pa.Table:
    """A pairs table (image + caption) in any of the layouts above, with ``image`` as bytes."""
    table, _ = _read_table(source)
    if image_column in table.column_names:
        table = _with_image_bytes(table, image_column, source)
        if image_column != "image":
            table = table.rename_columns(["image" if c == image_column else c for c in table.column_names])
    return table


# ------------------------------------------------------------------ helpers

def _read_table(source) -> tuple[pa.Table, list[str] | None]:
    """The rows and, when the source is a Hugging Face set, its ClassLabel names."""
    path = Path(source)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = read_json(path / "dataset_dict.json").get("splits", [])
        raise UserError(f"{source} is a Hugging Face DatasetDict; name one split's folder "
                        f"({', '.join(str(path / s) for s in splits)})")
    if path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        import datasets

        dataset = datasets.load_from_disk(str(path))
        table = dataset.data.table
        if dataset._indices is not None:  # a filtered or shuffled set keeps an index mapping
            table = table.take(dataset._indices.column(0))
        return table, _class_label_names(dataset.features)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    elif any(ch in str(source) for ch in "*?["):
        files = sorted(glob.glob(str(source), recursive=True))
    else:
        files = [str(path)] if path.is_file() else []
    if not files:
        raise UserError(f"labelled set {source}: no such file, or no parquet files in it")
    tables = [pq.read_table(f) for f in files]
    names = _hf_names_from_schema(tables[0].schema)
    try:
        table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")
    except pa.ArrowInvalid as err:
        raise UserError(f"labelled set {source}: its files disagree on columns: {err}") from None
    return table, names


def _hf_names_from_schema(schema: pa.Schema) -> list[str] | None:
    if not schema.metadata or b"huggingface" not in schema.metadata:
        return None
    import datasets

    return _class_label_names(datasets.Features.from_arrow_schema(schema))


def _class_label_names(features) -> list[str] | None:
    import datasets

    label = features.get("label") if features is not None else None
    return list(label.names) if isinstance(label, datasets.ClassLabel) else None


def _with_image_bytes(table: pa.Table, column: str, source) -> pa.Table:
    """A Hugging Face ``Image`` struct (bytes, path) becomes the encoded bytes; rows with
    only a path read the file (relative to the set's folder)."""
    images = table.column(column)
    if pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type):
        return table
    if not (pa.types.is_struct(images.type) and images.type.get_field_index("bytes") >= 0):
        raise UserError(f"labelled set {source}: column {column!r} is {images.type}; expected encoded image bytes "
                        f"or a Hugging Face Image feature")
    data = pc.struct_field(images, "bytes")
    if data.null_count and images.type.get_field_index("path") >= 0:
        base = Path(source).parent if Path(source).is_file() else Path(source)
        paths = pc.struct_field(images, "path").to_pylist()
        filled = [b if b is not None else (base / p).read_bytes() if p else None
                  for b, p in zip(data.to_pylist(), paths)]
        data = pa.array(filled, pa.binary())
    return table.set_column(table.column_names.index(column), column, data.cast(pa.binary()))


def _as_indices(labels, source, column) -> pa.Array:
    labels = labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels
    if pa.types.is_floating(labels.type):
        whole = pc.all(pc.equal(pc.floor(labels), labels)).as_py()
        if not whole:
            raise UserError(f"labelled set {source}: {column!r} holds fractional numbers, not class indices")
    return pc.cast(labels, pa.int64())


def _names_from_column(indices: pa.Array, names, source, column) -> list[str]:
    """Index -> name from the rows; one index with two names is an error."""
    pairs = pa.table({"i": indices, "name": names.cast(pa.string())}).group_by(["i", "name"]).aggregate([])
    by_index: dict[int, str] = {}
    for i, name in zip(pairs.column("i").to_pylist(), pairs.column("name").to_pylist()):
        if i in by_index and by_index[i] != name:
            raise UserError(f"labelled set {source}: label {i} has two names in {column!r} "
                            f"({by_index[i]!r}, {name!r})")
        by_index[i] = name
    if None in by_index.values():
        raise UserError(f"labelled set {source}: rows without a name in {column!r}")
    classnames = [by_index.get(i) for i in range(max(by_index) + 1)] if by_index else []
    missing = [i for i, n in enumerate(classnames) if n is None]
    if missing:  # indices without images: name them by the index so positions stay right
        raise UserError(f"labelled set {source}: no row names class {missing[0]} (labels count from 0 without gaps "
                        f"when names come from {column!r}; pass --class-names FILE for the full list)")
    return classnames


def _load_class_names(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    path = Path(value)
    if not path.is_file():
        raise UserError(f"class names {value}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            try:
                index = {int(k): str(v) for k, v in data.items()}
            except ValueError:
                raise UserError(f"class names {value}: a JSON object must map index -> name") from None
            if sorted(index) != list(range(len(index))):
                raise UserError(f"class names {value}: indices must run 0..{len(index) - 1}")
            return [index[i] for i in range(len(index))]
        if isinstance(data, list):
            return [str(v) for v in data]
        raise UserError(f"class names {value}: expected a JSON list or object")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"class names {value}: empty")
    return names
