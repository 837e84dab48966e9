"""text_classes (DataComp text-based filter): matches equal MetaCLIP's spacing rule applied
by brute force to lowercased captions and names; default list, user lists, WordNet."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from clipcurate.curation.metadata import spacing
from clipcurate.filters.text_classes import TextClasses, class_names

CAPTIONS = [
    "A Golden Retriever on the grass",
    "golden retrievers at the park",  # plural: no word-boundary match of "golden retriever"
    "category theory for cats",  # "cat" inside words only
    "Tabby cat, sleeping",
    "St. Bernard puppy!",
    "saint bernard",
    "TIGER SHARK.",
    "tigershark",
    "the\ttench\nfish",
    "goldfish;koi",
    "`ambulance`",
    "car mirror?",
    "",
    None,
    "Ein Hund im Park",
]


def brute_force(captions, names) -> list[list[int]]:
    """The rule itself: class i matches when " " + spaced lowercased name + " " is in the
    spaced lowercased caption."""
    spaced_names = [[" " + spacing(n.lower()).strip(" ") + " " for n in synonyms] for synonyms in names]
    out = []
    for caption in captions:
        text = spacing((caption or "").lower())
        out.append([i for i, synonyms in enumerate(spaced_names) if any(s in text for s in synonyms)])
    return out


def table(captions) -> pa.Table:
    n = len(captions)
    return pa.table({"uid": [f"u{i}" for i in range(n)], "caption": pa.array(captions, pa.string()),
                     "reject": pa.nulls(n, pa.string())})


def test_imagenet_names_follow_the_spacing_rule():
    out = TextClasses()(table(CAPTIONS))
    matched = out.column("class_ids").to_pylist()
    assert matched == brute_force(CAPTIONS, class_names())
    names = class_names()
    by_caption = {c: [names[i][0].lower() for i in ids] for c, ids in zip(CAPTIONS, matched)}
    assert by_caption["A Golden Retriever on the grass"] == ["golden retriever"]
    assert by_caption["golden retrievers at the park"] == []
    assert by_caption["category theory for cats"] == []
    assert by_caption["St. Bernard puppy!"] == ["st. bernard"]
    assert by_caption["saint bernard"] == []  # a synonym: only with wordnet
    assert sorted(by_caption["TIGER SHARK."]) == ["tiger", "tiger shark"]
    assert by_caption["the\ttench\nfish"] == ["tench"]
    assert by_caption["goldfish;koi"] == ["goldfish"]
    assert by_caption["`ambulance`"] == ["ambulance"]
    kept = out.column("reject").is_null().to_numpy(zero_copy_only=False)
    assert kept.tolist() == [bool(m) for m in matched]
    assert set(out.column("reject").drop_null().to_pylist()) == {"text_classes:no_class_name"}


def test_rejected_rows_pass_through_untouched():
    t = table(["a golden retriever", "a golden retriever"])
    t = t.set_column(2, "reject", pa.array([None, "basic_filter:too_few_words"]))
    out = TextClasses()(t)
    assert out.column("reject").to_pylist() == [None, "basic_filter:too_few_words"]
    assert out.column("class_ids").to_pylist() == [[207], None]


def test_user_list_and_wordnet_expansion(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(["Dog", "sports car", "automobile"]))
    captions = ["a domestic dog", "my red Sports Car.", "an auto on the road", "a car", "hotdog"]
    plain = TextClasses(classes=str(path))(table(captions)).column("class_ids").to_pylist()
    assert plain == [[0], [1], [], [], []]
    expanded = TextClasses(classes=str(path), wordnet=True)(table(captions)).column("class_ids").to_pylist()
    # WordNet 3.0: dog.n.01 = dog, domestic dog, Canis familiaris; sports_car.n.01 = sport car;
    # car.n.01 (automobile's first sense) = car, auto, automobile, machine, motorcar
    assert expanded == [[0], [1, 2], [2], [2], []]  # "sports car" names a car too
    assert expanded == brute_force(captions, class_names(str(path), wordnet=True))


def test_imagenet_wordnet_lemmas_come_from_each_class_synset():
    names = class_names(wordnet=True)
    assert len(names) == 1000
    assert "Tinca tinca" in names[0] and "Saint Bernard" in names[247]
    out = TextClasses(wordnet=True)(table(["saint bernard", "Carassius auratus in a bowl"]))
    assert out.column("class_ids").to_pylist() == [[247], [1]]


@pytest.mark.parametrize("n", [0, 3])
def test_empty_and_all_rejected_batches(n):
    t = table(["a golden retriever"] * n)
    if n:
        t = t.set_column(2, "reject", pa.array(["x:y"] * n))
    out = TextClasses()(t)
    assert out.num_rows == n and out.column("reject").to_pylist() == ["x:y"] * n
    assert np.all(out.column("class_ids").is_null().to_numpy(zero_copy_only=False))
