"""DataComp text-based filtering: keep pairs whose caption names a class of the target
task (Gadre et al. 2023, Sec. 4.2 and App. G: captions naming an ImageNet class; it kept
about 10% of the pool and beat no filtering on ImageNet-centric tasks).

Matching is MetaCLIP's substring rule (``curation/metadata.py``, the metaclip stage's):
the caption is spaced (``, . ; : ? ! ` `` padded, tab/newline to space, one space
around it) and a class name ``e`` matches where ``" " + e + " "`` occurs, so matches
stop at word boundaries and "cat" never matches "category". Here both sides are
lowercased first (case-insensitive) and each name is spaced by the same rule, so
"St. Bernard" matches "st. bernard" in a caption.

Class lists (``classes``):

- ``imagenet`` (default): the 1,000 ImageNet class names as open_clip ships them
  (``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``, the cleaned names OpenAI's
  zero-shot evaluation uses); ``wordnet: true`` adds every lemma of each class's
  WordNet synset (the synset ids from timm's ``imagenet_synsets.txt``, the lemmas from
  WordNet 3.0 through nltk), e.g. "tinca tinca" for tench, "st bernard" for St. Bernard;
- a file: a JSON list or one name per line (your downstream task's classes);
  ``wordnet: true`` adds the lemmas of each name's most frequent noun sense (the synset
  DataComp's own text filter looks words up by: ``wordnet.synsets(word)[0]``).

DataComp's reference (``baselines/apply_filter.py``) looks each caption word up in
WordNet and keeps the caption when that word's first synset is an ImageNet-21k synset;
this stage matches names (one or more words) directly, which is what the paper
describes, runs at automaton speed, and matches multi-word names ("golden retriever")
the word-by-word lookup cannot.

Adds ``class_ids`` (list<int32>: the matched classes' indices in the list, ImageNet's
class indices by default); rejects ``text_classes:no_class_name``.
"""

from __future__ import annotations

import functools
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from clipcurate.curation.metadata import EntryMatcher, load_entries, spacing
from clipcurate.pipelines.stage import Resources, Stage, StageConfig, kept_mask, reject_rows, set_column

IMAGENET = "imagenet"


class TextClassesConfig(StageConfig):
    classes: str = Field(IMAGENET, description="'imagenet' (the 1,000 ImageNet class names open_clip ships) or a "
                         "class list file: a JSON list or one name per line")
    wordnet: bool = Field(False, description="also match the WordNet lemmas (synonyms) of each class")
    wordnet_dir: str = Field("/usr/share/wordnet", description="WordNet 3.0 database files (Debian wordnet-base); "
                             "'' uses nltk's installed wordnet corpus")


class TextClasses(Stage):
    """Keep pairs whose caption names a class (word boundaries, any case)."""

    name = "text_classes"
    Config = TextClassesConfig
    reads = ("caption",)
    adds = {"class_ids": pa.list_(pa.int32())}

    def __init__(self, config: TextClassesConfig | None = None, **params):
        super().__init__(config, **params)
        self._matcher: EntryMatcher | None = None
        self._classes_of: tuple[np.ndarray, np.ndarray] | None = None  # entry -> class ids (CSR)

    def resources(self) -> Resources:
        return Resources(num_cpus=1.0, batch_size=4096)

    def setup(self) -> None:
        """Build the automaton over the spaced, lowercased names once per worker."""
        names = class_names(self.config.classes, wordnet=self.config.wordnet, wordnet_dir=self.config.wordnet_dir)
        entries: dict[str, list[int]] = {}
        for class_id, synonyms in enumerate(names):
            for synonym in synonyms:
                entry = spacing(synonym.lower()).strip(" ")
                if entry:
                    entries.setdefault(entry, []).append(class_id)
        self._matcher = EntryMatcher(list(entries))
        counts = np.array([len(set(ids)) for ids in entries.values()], dtype=np.int64)
        offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        values = np.concatenate([sorted(set(ids)) for ids in entries.values()]).astype(np.int32) \
            if entries else np.zeros(0, np.int32)
        self._classes_of = (offsets, values)

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        keep = kept_mask(batch)
        rows = np.flatnonzero(keep)
        captions = pc.utf8_lower(pc.fill_null(batch.column("caption").take(pa.array(rows)), ""))
        matched = self._to_classes(self._matcher.match(captions))
        index = np.full(batch.num_rows, -1, dtype=np.int64)
        index[rows] = np.arange(rows.size)
        batch = set_column(batch, "class_ids", matched.take(pa.array(index, mask=index < 0)))
        lengths = pc.fill_null(pc.list_value_length(batch.column("class_ids")), 0).to_numpy(zero_copy_only=False)
        return reject_rows(batch, keep & (lengths == 0), self.reason("no_class_name"))

    def _to_classes(self, entry_lists: pa.ListArray) -> pa.ListArray:
        """Matched entry ids per caption -> sorted unique class ids per caption."""
        offsets, values = self._classes_of
        n = len(entry_lists)
        entry_ids = entry_lists.values.to_numpy(zero_copy_only=False).astype(np.int64)
        row_of_entry = np.repeat(np.arange(n), np.diff(entry_lists.offsets.to_numpy()))
        counts = offsets[entry_ids + 1] - offsets[entry_ids]
        before = np.cumsum(counts) - counts  # where each entry's classes start in the gathered list
        flat = values[np.repeat(offsets[entry_ids] - before, counts) + np.arange(counts.sum())]
        width = int(values.max(initial=0)) + 1
        pairs = np.unique(np.repeat(row_of_entry, counts) * width + flat)
        rows, class_ids = np.divmod(pairs, width)
        out_offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n), out=out_offsets[1:])
        return pa.ListArray.from_arrays(pa.array(out_offsets, pa.int32()), pa.array(class_ids, pa.int32()))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_matcher"] = None
        state["_classes_of"] = None
        state["_ready"] = False
        return state


def class_names(classes: str = IMAGENET, *, wordnet: bool = False,
                wordnet_dir: str = "/usr/share/wordnet") -> list[list[str]]:
    """Per class, its names: the class name first, then WordNet lemmas when asked for."""
    if classes == IMAGENET:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        names = [[name] for name in IMAGENET_CLASSNAMES]
        if wordnet:
            reader = _wordnet(wordnet_dir)
            for synonyms, wnid in zip(names, _imagenet_wnids()):
                synset = reader.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
                synonyms += [lemma.replace("_", " ") for lemma in synset.lemma_names()]
        return names
    names = [[name] for name in load_entries(classes)]
    if wordnet:
        reader = _wordnet(wordnet_dir)
        for synonyms in names:
            senses = reader.synsets(synonyms[0].replace(" ", "_"), pos="n")
            if senses:
                synonyms += [lemma.replace("_", " ") for lemma in senses[0].lemma_names()]
    return names


def _imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k synset ids in class order, as timm (an open_clip dependency) ships them."""
    from importlib.resources import files

    text = files("timm.data").joinpath("_info", "imagenet_synsets.txt").read_text()
    wnids = text.split()
    if len(wnids) != 1000:
        raise ValueError(f"timm's imagenet_synsets.txt holds {len(wnids)} synsets, not 1000")
    return wnids


@functools.lru_cache(maxsize=2)
def _wordnet(wordnet_dir: str):
    """nltk's WordNet reader (seconds to open: once per process)."""
    from clipcurate.curation.metadata import wordnet_reader

    return wordnet_reader(wordnet_dir or None, None)

