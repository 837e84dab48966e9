"""Labelled sets as others write them: integer labels with a class-name column, a names
file, a Hugging Face ClassLabel (parquet and save_to_disk), string labels. The same
images and names must give the same zero-shot figures in every layout; integer labels
without names are a one-line error, never prompts made of digits."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.pipelines.cli import main
from clipcurate.pipelines.errors import UserError
from clipcurate.train.labels import read_labelled


@pytest.fixture(scope="module")
def layouts(shapes_run, tmp_path_factory):
    """The held-out shapes in five layouts; class indices in reverse name order, so a
    reader that sorted indices or names the wrong way would mislabel them."""
    root = tmp_path_factory.mktemp("layouts")
    table = pq.read_table(shapes_run / "heldout.parquet")
    names = sorted(set(table.column("label").to_pylist()), reverse=True)
    index = pa.array([names.index(n) for n in table.column("label").to_pylist()], pa.int64())
    integer = table.set_column(table.column_names.index("label"), "label", index)

    pq.write_table(integer.append_column("class_name", table.column("label")), root / "with_names.parquet")
    pq.write_table(integer, root / "integers.parquet")
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names),
                                  "caption": datasets.Value("string")})
    hf = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in table.column("image").to_pylist()],
                                     "label": index.to_pylist(), "caption": table.column("caption").to_pylist()},
                                    features=features)
    hf.to_parquet(str(root / "hf.parquet"))
    hf.save_to_disk(str(root / "hf_disk"))
    return {"strings": shapes_run / "heldout.parquet", "root": root, "names": names}


def test_every_layout_reads_to_the_same_names(layouts):
    root = layouts["root"]
    reference = read_labelled(layouts["strings"])
    assert reference.layout == "string labels"
    expected = reference.table.column("label").to_pylist()
    for source, kwargs, layout in [
        (root / "with_names.parquet", {}, "class-name column class_name"),
        (root / "integers.parquet", {"class_names": root / "classnames.txt"}, "class-names file"),
        (root / "hf.parquet", {}, "ClassLabel"),
        (root / "hf_disk", {}, "ClassLabel"),
    ]:
        read = read_labelled(source, **kwargs)
        assert read.layout == layout, source
        assert read.table.column("label").to_pylist() == expected, source
        assert read.classnames == layouts["names"]
        assert read.table.column("image").to_pylist() == reference.table.column("image").to_pylist()


def test_integer_labels_without_names_are_refused(layouts, tmp_path):
    with pytest.raises(UserError, match="class indices with no class names"):
        read_labelled(layouts["root"] / "integers.parquet")
    digits = pq.read_table(layouts["root"] / "integers.parquet")
    digits = digits.set_column(digits.column_names.index("label"), "label", digits.column("label").cast(pa.string()))
    pq.write_table(digits, tmp_path / "digits.parquet")
    with pytest.raises(UserError, match="class indices with no class names"):
        read_labelled(tmp_path / "digits.parquet")
    with pytest.raises(UserError, match="outside the 2 class names"):
        read_labelled(layouts["root"] / "integers.parquet", class_names=["a", "b"])
    clash = pa.table({"image": [b"x", b"y"], "label": [0, 0], "class_name": ["cat", "dog"]})
    pq.write_table(clash, tmp_path / "clash.parquet")
    with pytest.raises(UserError, match="label 0 has two names"):
        read_labelled(tmp_path / "clash.parquet")


def test_eval_on_integer_labels_equals_eval_on_string_labels(shapes_run, micro_config, layouts, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--data", str(shapes_run / "run"), "--model", str(micro_config), "--steps", "4",
                 "--batch-size", "32", "--output", str(ckpt), "--quiet"]) == 0
    capsys.readouterr()
    root = layouts["root"]

    def evaluate(*args) -> dict:
        assert main(["eval", "--model", str(ckpt), *args]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        return {k: v for k, v in result.items() if k.startswith(("zeroshot", "i2t", "t2i", "mismatch")) or k == "classes"}

    reference = evaluate("--data", str(layouts["strings"]))
    assert reference["classes"] == 12
    assert evaluate("--data", str(root / "with_names.parquet")) == reference
    assert evaluate("--data", str(root / "integers.parquet"), "--class-names", str(root / "classnames.txt")) == reference
    assert evaluate("--data", str(root / "hf_disk")) == reference

    assert main(["eval", "--model", str(ckpt), "--data", str(root / "integers.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--class-names" in err and "no class names" in err
