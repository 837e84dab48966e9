"""Metadata: loading entry lists, matching exactly as MetaCLIP defines it, building lists."""

from __future__ import annotations

import json
import math
import random

import pyarrow as pa
import pytest

from clipcurate.curation import metadata
from clipcurate.curation.metadata import EntryMatcher, cached_matcher, joined_spacing, load_entries, spacing
from clipcurate.pipelines.cli import main as curate
from clipcurate.pipelines.errors import InputError

# Entries that are prefixes/suffixes/infixes of each other, hold punctuation or
# whitespace (some can never match under the rule), differ only in case, or are unicode.
ENTRIES = [
    "new", "New", "new york", "york", "new york city", "york city", "city", "a", "a a", "a a a",
    "dog", "hot dog", "hot", "dog hot", "do", "og", "St. Louis", "St", "Louis", "e.g", "e", "g",
    "café", "naïve", "東京", "東京 tower", "😀", "😀 😀", "Ünïcödé", "dog\tcat", "cat", "x-ray", "x",
    "ray", "rock'n'roll", "`", "tab", "10", "1", "0", "100%", "?!", "end", " lead", "trail ",
]
WORDS = ["new", "New", "york", "York", "city", "a", "dog", "hot", "do", "og", "St.", "Louis", "e.g.",
         "café", "naïve", "東京", "tower", "😀", "Ünïcödé", "cat", "x-ray", "rock'n'roll", "10", "100%",
         "end", "lead", "trail", "NEW", "ñ", "\u00a0", "zz"]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", "\r\n", ",", ", ", ".", "...", ";", ":", "?", "!", "`", "?!", " - "]


def reference(caption: str | None, entries: list[str]) -> list[int]:
    """MetaCLIP's rule in plain Python: " " + entry + " " in the spaced caption."""
    text = spacing(caption or "")
    return [i for i, entry in enumerate(entries) if f" {entry} " in text]


def tricky_captions(n: int, seed: int = 0) -> list[str | None]:
    rng = random.Random(seed)
    captions: list[str | None] = [
        "new york city", "New York City, new york.", "a a a a", "a,a;a:a?a!a`a", "\tdog\thot\tdog\n",
        "hot dog hot dog", "St. Louis", "e.g. a dog", "café naïve 東京 tower 😀😀 😀 😀", "Ünïcödé!",
        "dog\tcat", "x-ray of a dog", "rock'n'roll", "``", "100%?!", " lead", "trail ", "  lead and trail  ",
        "", None, "end", "END end.", "10.1.0", "1,0", "new\u00a0york", "東京tower",
    ]
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            parts.append(rng.choice(WORDS))
            parts.append(rng.choice(SEPARATORS))
        captions.append("".join(parts[: rng.randint(1, len(parts))]))
    return captions


def test_spacing_is_metaclips_rule():
    assert spacing("a,b") == " a , b "
    assert spacing("x\ty\nz\r") == " x y z  "
    assert spacing("St. Louis!") == " St .  Louis !  "
    captions = tricky_captions(300)
    assert joined_spacing(pa.array(captions, pa.string())).split("\n") == [spacing(c or "") for c in captions]


def test_matcher_equals_plain_python_reference():
    captions = tricky_captions(3000)
    got = EntryMatcher(ENTRIES).match(pa.array(captions, pa.string())).to_pylist()
    want = [reference(c, ENTRIES) for c in captions]
    assert got == want
    # the cases the rule is about, spelled out
    by_caption = dict(zip([c or "" for c in captions], got))
    assert [ENTRIES[i] for i in by_caption["new york city"]] == ["new", "new york", "york", "new york city", "york city", "city"]
    assert [ENTRIES[i] for i in by_caption["a a a a"]] == ["a", "a a", "a a a"]
    assert [ENTRIES[i] for i in by_caption["St. Louis"]] == ["St", "Louis"]  # "St. Louis" never matches
    assert [ENTRIES[i] for i in by_caption["dog\tcat"]] == ["dog", "cat"]  # an entry with a tab never matches
    assert by_caption["東京tower"] == [] and by_caption["END end."] == [ENTRIES.index("end")]
    assert ENTRIES.index("😀 😀") in by_caption["café naïve 東京 tower 😀😀 😀 😀"]
    assert by_caption["  lead and trail  "] == [ENTRIES.index(" lead"), ENTRIES.index("trail ")]


def test_matcher_on_chunked_and_empty_input():
    matcher = EntryMatcher(["dog", "cat"])
    chunked = pa.chunked_array([["a dog"], [], ["cat, dog", None]], pa.string())
    assert matcher.match(chunked).to_pylist() == [[0], [0, 1], []]
    assert matcher.match(pa.array([], pa.string())).to_pylist() == []
    assert matcher.match(pa.array([], pa.string())).type == pa.list_(pa.int32())


def test_load_json_and_lines(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(["dog", "hot dog", "東京"]), encoding="utf-8")
    assert load_entries(tmp_path / "m.json") == ["dog", "hot dog", "東京"]
    (tmp_path / "m.txt").write_bytes("dog\r\nhot dog\n\n東京\n".encode())
    assert load_entries(tmp_path / "m.txt") == ["dog", "hot dog", "東京"]


@pytest.mark.parametrize("content, message", [
    ('["dog", "dog"]', "duplicates entry 0"),
    ('["dog", ""]', "entry 1 is empty"),
    ('["dog", 3]', "not a string"),
    ('["dog",', "not valid JSON"),
])
def test_load_rejects_bad_lists(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_entries(path)


def test_cached_matcher_reuses_and_rebuilds(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text("dog\ncat\n")
    first = cached_matcher(path)
    assert cached_matcher(str(path)) is first
    path.write_text("dog\ncat\nbird\n")
    second = cached_matcher(path)
    assert second is not first and len(second) == 3
    assert second.match(pa.array(["a bird"])).to_pylist() == [[2]]


def test_ngram_counts_and_pmi(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a red car, parked.\nthe red car\nNew York city at night\nNew York skyline\n"
                      "a red car in New York\nhot dog\na dog\na cat\na red dog\n", encoding="utf-8")
    unigrams, bigrams = metadata.count_ngrams(metadata.read_corpus([str(corpus)]))
    counts = dict(zip(unigrams["token"], unigrams["count"]))
    assert counts["car"] == 3 and counts["New"] == 3 and counts["parked"] == 1
    assert "," not in counts and "car," not in counts
    pairs = {(f, s): c for f, s, c in bigrams.iter_rows()}
    assert pairs[("red", "car")] == 3 and pairs[("New", "York")] == 3
    assert ("car", "parked") not in pairs  # the comma breaks the bigram
    assert metadata.unigram_entries(unigrams, 4) == ["a", "red"]
    assert metadata.unigram_entries(unigrams, 3) == ["a", "red", "New", "York", "car", "dog"]
    n = sum(counts.values())
    pmi = {f"{f} {s}": math.log2(c * n / (counts[f] * counts[s])) for (f, s), c in pairs.items()}
    threshold = sorted(pmi.values())[len(pmi) // 2]
    chosen = metadata.bigram_entries(unigrams, bigrams, min_pmi=threshold)
    assert set(chosen) == {b for b, v in pmi.items() if v >= threshold}
    assert 0 < len(chosen) < len(pmi)
    assert sorted(metadata.bigram_entries(unigrams, bigrams, min_pmi=0, min_bigram_count=3)) == ["New York", "a red", "red car"]


def test_cli_build_from_captions_without_wordnet(tmp_path, capsys):
    corpus = tmp_path / "captions.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["a red car", "a red car.", "red car!", "blue sky", None]}), corpus)
    extra = tmp_path / "titles.txt"
    extra.write_text("Eiffel Tower\nred\n")
    out = tmp_path / "entries.json"
    code = curate(["metadata", "build", "--captions", str(corpus), "--output", str(out), "--no-wordnet",
                   "--no-numbers", "--min-count", "2", "--min-pmi", "0", "--min-bigram-count", "2",
                   "--extra", str(extra)])
    assert code == 0
    entries = load_entries(out)
    # unigrams by count (ties by token), then bigrams by PMI, then the extra list minus repeats
    assert entries[:3] == ["car", "red", "a"]
    assert sorted(entries[3:5]) == ["a red", "red car"] and entries[5:] == ["Eiffel Tower"]
    assert "unigrams: +3" in capsys.readouterr().out


def small_wordnet(target, synsets_per_pos: int = 400):
    """A consistent prefix of Debian's WordNet 3.0: the first synsets of each data file
    (their byte offsets stay valid) and the index lines pointing at them. Reading the
    whole database through nltk takes ~15 s; this keeps the test fast, on real files."""
    target.mkdir()
    for pos in ("noun", "verb", "adj", "adv"):
        kept: set[str] = set()
        with open(f"/usr/share/wordnet/data.{pos}", encoding="utf-8") as source, \
                open(target / f"data.{pos}", "w", encoding="utf-8") as out:
            for line in source:
                if not line.startswith("  "):
                    if len(kept) == synsets_per_pos:
                        break
                    kept.add(line.split(" ", 1)[0])
                out.write(line)
        with open(f"/usr/share/wordnet/index.{pos}", encoding="utf-8") as source, \
                open(target / f"index.{pos}", "w", encoding="utf-8") as out:
            for line in source:
                if line.startswith("  "):
                    out.write(line)
                    continue
                fields = line.split()
                n_pointers = int(fields[3])
                pointers = fields[4:4 + n_pointers]
                offsets = [o for o in fields[6 + n_pointers:] if o in kept]
                if offsets:
                    out.write(" ".join([*fields[:2], str(len(offsets)), str(n_pointers), *pointers,
                                        str(len(offsets)), "0", *offsets]) + "  \n")
        (target / f"{pos}.exc").write_text(open(f"/usr/share/wordnet/{pos}.exc", encoding="utf-8").read())
    return target


def test_wordnet_synset_names_via_nltk(tmp_path):
    """nltk reads Debian's wordnet-base files through the cached copy + lexnames."""
    wordnet_dir = small_wordnet(tmp_path / "wordnet")
    names = metadata.wordnet_entries(wordnet_dir=str(wordnet_dir), cache_dir=str(tmp_path / "cache"))
    assert names[:4] == ["able", "unable", "abaxial", "adaxial"]  # nltk's synset order, names as MetaCLIP takes them
    assert "entity" in names and "physical entity" in names  # "_" -> " "
    assert len(names) == len(set(names)) and 1000 < len(names) < 1600
    lemmas = metadata.wordnet_entries(all_lemmas=True, wordnet_dir=str(wordnet_dir), cache_dir=str(tmp_path / "cache"))
    assert set(names) <= {n.lower() for n in lemmas} and len(lemmas) > len(names)


def test_cli_build_with_wordnet_and_info(tmp_path, capsys):
    wordnet_dir = small_wordnet(tmp_path / "wordnet", synsets_per_pos=100)
    out = tmp_path / "entries.json"
    code = curate(["metadata", "build", "--output", str(out), "--wordnet-dir", str(wordnet_dir),
                   "--cache-dir", str(tmp_path / "cache"), "--max-entries", "200"])
    assert code == 0
    entries = load_entries(out)
    assert entries[:3] == ["0", "1", "2"] and len(entries) == 200 and "able" in entries
    capsys.readouterr()
    captions = tmp_path / "c.txt"
    captions.write_text("an able 7 year old\nqwxz\n")
    assert curate(["metadata", "info", str(out), "--captions", str(captions), "--json", "--t", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["captions"] == 2 and report["matched"] == 1
    assert report["top"] == [{"entry": "7", "count": 1}, {"entry": "able", "count": 1}]


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = curate(["metadata", "info", str(tmp_path / "missing.json")])
    assert code == 2
    assert "cannot read metadata file" in capsys.readouterr().err
