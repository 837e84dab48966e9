"""MetaCLIP metadata: load entry lists, match captions against them, build new lists.

Matching follows MetaCLIP's ``substr_matching.py`` ("Demystifying CLIP Data", Xu et
al. 2023, Sec. 3.2): the caption is padded with one space on each side, each of
``, . ; : ? ! ` `` gets a space on each side, tab/newline/carriage return become
spaces, and entry ``e`` matches when ``" " + e + " "`` occurs in that text
(case-sensitive). A caption's matches are the *set* of matched entry ids, as the
reference returns them (we sort them ascending so outputs are reproducible).

Building follows the paper's recipe (Sec. 3.1, ``metaclip/build_metadata.py``): the
numbers 0-99, WordNet synset names, unigrams with count >= k and bigrams with PMI >= p
from a text corpus. The paper counted n-grams on English Wikipedia and added Wikipedia
titles by page views; neither is reachable offline here, so the corpus is a caption
file you give (``--captions``) and titles can be passed in as ``--extra`` lists.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.pipelines.errors import InputError, UserError

PUNCTS_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
CHARS_TO_SPACE = ("\t", "\n", "\r")
# Joins spaced captions into one text for a single automaton pass. Spacing turns every
# "\n" of a caption into a space, so no match can cross it (entries holding it never match).
_SEPARATOR = "\n"


# ------------------------------------------------------------------------- loading


def load_entries(path: str | os.PathLike) -> list[str]:
    """Read a metadata entry list: a JSON list of strings, or one entry per line.

    Entry ids are positions in this list. Blank lines of a text file are skipped;
    empty or duplicate entries are errors (an empty entry would match any double
    space, and a duplicate would make its id ambiguous).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot read metadata file {path}: {err.strerror}") from None
    if text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"metadata file {path} is not valid JSON: {err}") from None
        bad = next((i for i, e in enumerate(entries) if not isinstance(e, str)), None)
        if bad is not None:
            raise InputError(f"metadata file {path}: entry {bad} is not a string: {entries[bad]!r}")
    else:
        entries = [line for line in text.split("\n") if line.strip("\r")]
        entries = [e[:-1] if e.endswith("\r") else e for e in entries]
    check_entries(entries, str(path))
    return entries


def check_entries(entries: Sequence[str], where: str = "metadata") -> None:
    """Raise InputError on empty or duplicate entries, naming the first one."""
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if not entry:
            raise InputError(f"{where}: entry {index} is empty")
        if entry in seen:
            raise InputError(f"{where}: entry {index} {entry!r} duplicates entry {seen[entry]}")
        seen[entry] = index


def save_entries(entries: Sequence[str], path: str | os.PathLike) -> None:
    """Write entries as a JSON list (MetaCLIP's metadata.json format), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(list(entries), ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------ matching


def spacing(text: str) -> str:
    """MetaCLIP's ``spacing``: the plain-Python form of the rule (reference, tests)."""
    spaced = f" {text} "
    for punct in PUNCTS_TO_WRAP:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in CHARS_TO_SPACE:
        spaced = spaced.replace(char, " ")
    return spaced


class EntryMatcher:
    """An Aho-Corasick automaton over ``" " + entry + " "`` for a fixed entry list.

    ``match`` runs the automaton once over a batch: the spaced captions are joined by
    a separator that spacing has removed from every caption (``joined_spacing``), and
    each match's end position is mapped back to its caption. pyahocorasick's ``iter`` reports every
    (also overlapping) occurrence, so this equals testing ``" "+e+" " in text`` for
    every entry.
    """

    def __init__(self, entries: Sequence[str]):
        import ahocorasick

        check_entries(entries)
        self.entries = list(entries)
        self.automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for entry_id, entry in enumerate(self.entries):
            if _SEPARATOR not in entry:  # such entries can never match (spacing removes "\n")
                self.automaton.add_word(f" {entry} ", entry_id)
        if len(self.automaton):
            self.automaton.make_automaton()

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, captions: pa.Array | pa.ChunkedArray) -> pa.ListArray:
        """Sorted unique matched entry ids per caption, as list<int32> (empty: no match)."""
        n = len(captions)
        if n == 0 or len(self.automaton) == 0:
            return _list_array(np.zeros(n + 1, dtype=np.int32), np.zeros(0, dtype=np.int32))
        text = joined_spacing(captions)
        separators = np.flatnonzero(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) == ord(_SEPARATOR))
        flat = np.fromiter(itertools.chain.from_iterable(self.automaton.iter(text)), dtype=np.int64)
        ends, entry_ids = flat[0::2], flat[1::2]
        rows = np.searchsorted(separators, ends)
        pairs = np.sort(rows * len(self.entries) + entry_ids)  # np.sort + diff beats np.unique here
        if pairs.size:
            pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
        rows, entry_ids = np.divmod(pairs, len(self.entries))
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
        return _list_array(offsets, entry_ids.astype(np.int32))


def joined_spacing(captions: pa.Array | pa.ChunkedArray) -> str:
    """The spaced captions joined by the separator, in one text: each caption's "\n"
    becomes a space first (as spacing does), so the separators are the only "\n" left,
    then the other replacements run once over the whole text (faster than per caption)."""
    flat = pc.replace_substring(pc.fill_null(captions, ""), _SEPARATOR, " ").to_pylist()
    text = " " + f" {_SEPARATOR} ".join(flat) + " "
    for punct in PUNCTS_TO_WRAP:
        text = text.replace(punct, f" {punct} ")
    for char in CHARS_TO_SPACE:
        if char != _SEPARATOR:
            text = text.replace(char, " ")
    return text


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


_MATCHERS: dict[str, tuple[tuple, EntryMatcher]] = {}


def cached_matcher(path: str | os.PathLike) -> EntryMatcher:
    """The matcher for an entry file, built on first use in this process and reused.

    One matcher per file (per-language lists each have theirs), rebuilt when the
    file's size or mtime changes.
    """
    real = os.path.realpath(path)
    try:
        info = os.stat(real)
    except OSError as err:
        raise InputError(f"cannot read metadata file {path}: {err.strerror}") from None
    version = (info.st_size, info.st_mtime_ns)
    cached = _MATCHERS.get(real)
    if cached is None or cached[0] != version:
        _MATCHERS[real] = cached = (version, EntryMatcher(load_entries(real)))
    return cached[1]


# ------------------------------------------------------------------------ building


def numbers_entries() -> list[str]:
    """The paper's seed entries: the numbers 0-99 (``build_metadata.py``)."""
    return [str(i) for i in range(100)]


def wordnet_entries(*, all_lemmas: bool = False, wordnet_dir: str = "/usr/share/wordnet",
                    cache_dir: str | None = None) -> list[str]:
    """WordNet entries, as MetaCLIP takes them: each synset's name (its head lemma,
    lowercased by nltk, ``_`` -> space), in nltk's synset order. ``all_lemmas`` takes
    every lemma name instead (more entries, case preserved).

    Reads WordNet 3.0 with nltk from Debian's ``wordnet-base`` files: nltk wants them
    under ``<nltk_data>/corpora/wordnet/`` with a ``lexnames`` file Debian does not
    ship, and its path sandbox refuses symlinks leaving that folder, so the files are
    copied once into a cache folder and ``lexnames`` is written from the WordNet 3.0
    table. Without ``wordnet_dir``, nltk's own installed wordnet corpus is used.
    """
    reader = wordnet_reader(wordnet_dir, cache_dir)
    if all_lemmas:
        names = (name.replace("_", " ") for name in reader.all_lemma_names())
    else:
        names = (s.name().rsplit(".", 2)[0].replace("_", " ") for s in reader.all_synsets())
    return list(dict.fromkeys(names))


# WordNet 3.0 lexicographer files (lexnames(5WN)), with their syntactic category.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_WORDNET_FILES = ("data.adj", "data.adv", "data.noun", "data.verb", "index.adj", "index.adv",
                  "index.noun", "index.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "clipcurate")


def wordnet_reader(wordnet_dir: str | None, cache_dir: str | None):
    import warnings

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if not wordnet_dir:
        try:
            from nltk.corpus import wordnet

            wordnet.ensure_loaded()
            return wordnet
        except LookupError:
            raise UserError("nltk has no wordnet corpus installed; pass --wordnet-dir "
                            "(Debian: apt install wordnet-base -> /usr/share/wordnet)") from None
    missing = [f for f in _WORDNET_FILES if not os.path.isfile(os.path.join(wordnet_dir, f))]
    if missing:
        raise UserError(f"WordNet folder {wordnet_dir} lacks {', '.join(missing)} "
                        "(Debian: apt install wordnet-base)")
    data_root = os.path.join(cache_dir or default_cache_dir(), "nltk_data")
    corpus = os.path.join(data_root, "corpora", "wordnet")
    os.makedirs(corpus, exist_ok=True)
    for name in _WORDNET_FILES + ("cntlist.rev", "index.sense"):
        source, target = os.path.join(wordnet_dir, name), os.path.join(corpus, name)
        if os.path.isfile(source) and (not os.path.isfile(target)
                                       or os.path.getsize(target) != os.path.getsize(source)):
            shutil.copyfile(source, target + ".tmp")
            os.replace(target + ".tmp", target)
    for name in ("cntlist.rev", "index.sense"):  # optional for names; nltk opens them
        if not os.path.isfile(os.path.join(corpus, name)):
            open(os.path.join(corpus, name), "w").close()
    lexnames = "".join(f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))
    with open(os.path.join(corpus, "lexnames"), "w", encoding="utf-8") as handle:
        handle.write(lexnames)
    if data_root not in nltk.data.path:
        nltk.data.path.insert(0, data_root)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions")
        return WordNetCorpusReader(corpus, None)


def read_corpus(paths: Iterable[str], *, column: str = "caption") -> "pl.LazyFrame":  # noqa: F821
    """A caption corpus as a lazy polars frame with one string column ``text``:
    parquet files (column ``column``) or text files (one caption per line)."""
    import polars as pl

    frames = []
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f"caption file {path} not found")
        if path.endswith(".parquet"):
            frame = pl.scan_parquet(path)
            if column not in frame.collect_schema().names():
                raise InputError(f"{path} has no column '{column}' (choose one with --column)")
            frames.append(frame.select(pl.col(column).cast(pl.String).alias("text")))
        else:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
            frames.append(pl.LazyFrame({"text": lines}, schema={"text": pl.String}))
    if not frames:
        raise InputError("no caption files given")
    return pl.concat(frames)


# A token of punctuation only: ASCII punctuation plus MetaCLIP 2's additional (CJK) marks.
_PUNCT_TOKEN = "^[[:punct:]，。、；：？¿！“”‘’（）【】《》〈〉「」『』～—]+$"


def count_ngrams(corpus: "pl.LazyFrame") -> tuple["pl.DataFrame", "pl.DataFrame"]:  # noqa: F821
    """Unigram and bigram counts of a corpus, MetaCLIP 2 style (``build_ngram.py``).

    Text is spaced with the matching rule first, so ``dog,`` counts as ``dog`` and
    every counted n-gram is one the matcher can find; then split on space, tab,
    newline and carriage return (the separators of the rule).
    Pure-punctuation tokens are not counted and break bigrams. Returns frames
    ``(token, count)`` and ``(first, second, count)``.
    """
    import polars as pl

    text = pl.col("text").fill_null("")
    for char in PUNCTS_TO_WRAP:
        text = text.str.replace_all(char, f" {char} ", literal=True)
    tokens = (
        corpus.select(text.str.extract_all(r"[^ \t\n\r]+").alias("token"))
        .with_row_index("row")
        .explode("token")
        .drop_nulls("token")
        .with_columns(is_word=~pl.col("token").str.contains(_PUNCT_TOKEN))
        .with_columns(
            next_token=pl.col("token").shift(-1).over("row"),
            next_is_word=pl.col("is_word").shift(-1).over("row"),
        )
    )
    unigrams = (tokens.filter(pl.col("is_word")).group_by("token").agg(pl.len().alias("count"))
                .sort(["count", "token"], descending=[True, False]))
    bigrams = (tokens.filter(pl.col("is_word") & pl.col("next_is_word").fill_null(False))
               .group_by(["token", "next_token"]).agg(pl.len().alias("count"))
               .rename({"token": "first", "next_token": "second"}))
    unigrams_df, bigrams_df = pl.collect_all([unigrams, bigrams])
    return unigrams_df, bigrams_df


def unigram_entries(unigrams, min_count: int) -> list[str]:
    """Unigrams with count >= ``min_count`` (the paper: 100 on Wikipedia), most frequent first."""
    import polars as pl

    return unigrams.filter(pl.col("count") >= min_count)["token"].to_list()


def bigram_entries(unigrams, bigrams, min_pmi: float, *, min_bigram_count: int = 1) -> list[str]:
    """Bigrams with PMI >= ``min_pmi`` (the paper: 30 on Wikipedia), highest PMI first.

    PMI is nltk's ``BigramAssocMeasures.pmi`` (log2), scored by nltk's
    ``BigramCollocationFinder`` over the unigram and bigram counts, as in
    ``build_metadata.py``. ``min_bigram_count`` drops rarer bigrams first (nltk's
    ``apply_freq_filter``); 1 keeps them all, like the paper.
    """
    from nltk.collocations import BigramAssocMeasures, BigramCollocationFinder
    from nltk.probability import FreqDist

    word_fd = FreqDist(dict(zip(unigrams["token"].to_list(), unigrams["count"].to_list())))
    bigram_fd = FreqDist(dict(zip(zip(bigrams["first"].to_list(), bigrams["second"].to_list()),
                                  bigrams["count"].to_list())))
    finder = BigramCollocationFinder(word_fd, bigram_fd)
    if min_bigram_count > 1:
        finder.apply_freq_filter(min_bigram_count)
    scored = finder.score_ngrams(BigramAssocMeasures.pmi)
    return [f"{first} {second}" for (first, second), pmi in scored if pmi >= min_pmi]


def merge_entries(sources: Iterable[tuple[str, Iterable[str]]], *, max_entries: int | None = None
                  ) -> tuple[list[str], dict[str, int]]:
    """Union of sources in order, first occurrence wins, skipping empty entries and
    single punctuation characters (the paper's ``forbidden`` set); entries holding a
    tab/newline/CR or spaced punctuation are kept (they simply never match, as in
    MetaCLIP). Returns the entries and how many each source added."""
    forbidden = set(string.punctuation)
    entries: dict[str, None] = {}
    added: dict[str, int] = {}
    for name, source in sources:
        before = len(entries)
        for entry in source:
            if max_entries is not None and len(entries) >= max_entries:
                break
            if entry and entry.strip() and entry not in forbidden:
                entries.setdefault(entry, None)
        added[name] = len(entries) - before
    return list(entries), added
